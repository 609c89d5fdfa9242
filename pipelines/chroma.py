"""``HeadHunterChromaPipeline``: Chroma with head-level SoftPAG guidance."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from diffusers import ChromaPipeline
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.chroma.pipeline_chroma import XLA_AVAILABLE, calculate_shift, retrieve_timesteps
from diffusers.pipelines.chroma.pipeline_output import ChromaPipelineOutput

from headhunter.guidance import combine, guidance_delta, scatter_perturbed
from headhunter.locking import one_call_per_transformer

from ._docs import PAG_ARGS_DOC
from ._mixin import HeadHunterMixin

if XLA_AVAILABLE:
    import torch_xla.core.xla_model as xm

EXAMPLE_DOC = """
    Examples:
        ```py
        >>> import torch
        >>> from headhunter.pipelines import HeadHunterChromaPipeline

        >>> pipe = HeadHunterChromaPipeline.from_pretrained("lodestones/Chroma1-HD", torch_dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()
        >>> image = pipe(
        ...     "a lighthouse at dusk, film photograph",
        ...     negative_prompt="low quality, blurry",
        ...     num_inference_steps=28,
        ...     guidance_scale=4.0,
        ...     pag_heads="L10H3,L30H12",
        ...     pag_scale=3.0,
        ... ).images[0]
        ```
"""


class HeadHunterChromaPipeline(HeadHunterMixin, ChromaPipeline):
    r"""
    [`ChromaPipeline`] with perturbation guidance on individual attention heads (SoftPAG, HeadHunter).

    Loads like its parent and accepts every argument of its parent's `__call__`, plus the `pag_*` arguments. Layers are
    numbered as FLUX.1's: `0..D-1` the double-stream blocks, `D..D+S-1` the single-stream blocks (57 layers for
    Chroma1). `guidance_scale > 1` is classifier-free guidance with the negative prompt, as in the parent.

    `share_prefix` (default True) makes the perturbed branch fork from the conditional one at the first perturbed
    layer; False runs it through every block (same result, more work).
    """

    # Copied from diffusers.pipelines.chroma.pipeline_chroma.ChromaPipeline.__call__ with the HeadHunter additions
    # between `# HeadHunter >>>` and `# HeadHunter <<<` (the parent lines they replace are kept there as `#|` comments;
    # the stock step is indented one level under `else:`); tests/test_copies.py fails when the parent changes.
    @one_call_per_transformer
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 35,
        sigmas: list[float] | None = None,
        guidance_scale: float = 5.0,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_ip_adapter_image: PipelineImageInput | None = None,
        negative_ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int], None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        # HeadHunter >>>
        pag_heads: Any = None,
        pag_scale: float = 3.0,
        pag_softness: float = 1.0,
        pag_target: str = "identity",
        pag_scope: str = "joint",
        pag_interval: tuple[float, float] = (0.0, 1.0),
        pag_adaptive_scale: float = 0.0,
        pag_applied_layers: list[int | str] | None = None,
        pag_reuse: int = 1,
        pag_mode: str = "cond",
        # HeadHunter <<<
    ) -> ChromaPipelineOutput | tuple:
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            height,
            width,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )

        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs
        self._current_timestep = None
        self._interrupt = False

        # 2. Define call parameters
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        # HeadHunter >>>
        # HeadHunter: validate the pag_* arguments before anything runs
        pag = self.check_pag_inputs(
            batch_size,
            num_images_per_prompt,
            pag_heads=pag_heads,
            pag_scale=pag_scale,
            pag_softness=pag_softness,
            pag_target=pag_target,
            pag_scope=pag_scope,
            pag_interval=pag_interval,
            pag_adaptive_scale=pag_adaptive_scale,
            pag_applied_layers=pag_applied_layers,
            pag_reuse=pag_reuse,
            pag_mode=pag_mode,
        )
        # HeadHunter <<<

        device = self._execution_device

        lora_scale = (
            self.joint_attention_kwargs.get("scale", None) if self.joint_attention_kwargs is not None else None
        )
        (
            prompt_embeds,
            text_ids,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_text_ids,
            negative_prompt_attention_mask,
        ) = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            lora_scale=lora_scale,
        )

        # HeadHunter >>>
        # HeadHunter: the perturbation plan over the batch [negative (CFG only); conditional], on the device
        if self.do_classifier_free_guidance and pag.active and negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                "pag_heads with classifier-free guidance runs both prompts in one batch: `prompt_embeds` and "
                f"`negative_prompt_embeds` must have the same shape, got {tuple(prompt_embeds.shape)} and "
                f"{tuple(negative_prompt_embeds.shape)}"
            )
        plan = self.prepare_perturbation_plan(
            pag, self.do_classifier_free_guidance, text_len=prompt_embeds.shape[1], device=device
        )
        # HeadHunter <<<
        # 4. Prepare latent variables
        num_channels_latents = self.transformer.config.in_channels // 4
        latents, latent_image_ids = self.prepare_latents(
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # 5. Prepare timesteps
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas
        image_seq_len = latents.shape[1]
        mu = calculate_shift(
            image_seq_len,
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )

        attention_mask = self._prepare_attention_mask(
            batch_size=latents.shape[0],
            sequence_length=image_seq_len,
            dtype=latents.dtype,
            attention_mask=prompt_attention_mask,
        )
        negative_attention_mask = self._prepare_attention_mask(
            batch_size=latents.shape[0],
            sequence_length=image_seq_len,
            dtype=latents.dtype,
            attention_mask=negative_prompt_attention_mask,
        )

        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler,
            num_inference_steps,
            device,
            sigmas=sigmas,
            mu=mu,
        )
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)

        if (ip_adapter_image is not None or ip_adapter_image_embeds is not None) and (
            negative_ip_adapter_image is None and negative_ip_adapter_image_embeds is None
        ):
            negative_ip_adapter_image = np.zeros((width, height, 3), dtype=np.uint8)
            negative_ip_adapter_image = [negative_ip_adapter_image] * self.transformer.encoder_hid_proj.num_ip_adapters

        elif (ip_adapter_image is None and ip_adapter_image_embeds is None) and (
            negative_ip_adapter_image is not None or negative_ip_adapter_image_embeds is not None
        ):
            ip_adapter_image = np.zeros((width, height, 3), dtype=np.uint8)
            ip_adapter_image = [ip_adapter_image] * self.transformer.encoder_hid_proj.num_ip_adapters

        if self.joint_attention_kwargs is None:
            self._joint_attention_kwargs = {}

        image_embeds = None
        negative_image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
            )
        if negative_ip_adapter_image is not None or negative_ip_adapter_image_embeds is not None:
            negative_image_embeds = self.prepare_ip_adapter_image_embeds(
                negative_ip_adapter_image,
                negative_ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
            )

        # HeadHunter >>>
        # HeadHunter: w_t of every step and whether its perturbed pass runs (pag_reuse), known before the loop (the loop
        # reads nothing back from the device); pag_delta: the last v_c - v_perturbed, reused on the steps between
        pag_scales, pag_perturb = pag.step_schedule(timesteps, num_inference_steps) if pag.active else (None, None)
        pag_delta = None
        # HeadHunter <<<
        # 6. Denoising loop
        # We set the index here to remove DtoH sync, helpful especially during compilation.
        # Check out more details here: https://github.com/huggingface/diffusers/pull/11696
        self.scheduler.set_begin_index(0)
        # HeadHunter >>>
#|         with self.progress_bar(total=num_inference_steps) as progress_bar:
        # HeadHunter: the SoftPAG processors (and fork hooks) are installed once for the loop and restored after it
        with self.perturbation_session(
            pag, plan, text_len=prompt_embeds.shape[1]
        ) as session, self.progress_bar(total=num_inference_steps) as progress_bar:
        # HeadHunter <<<
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                self._current_timestep = t
                if image_embeds is not None:
                    self._joint_attention_kwargs["ip_adapter_image_embeds"] = image_embeds

                # broadcast to batch dimension in a way that's compatible with ONNX/Core ML
                timestep = t.expand(latents.shape[0]).to(latents.dtype)

                # HeadHunter >>>
                # HeadHunter: w_t for this step (0: no perturbation term, the stock step below runs) and whether the
                # perturbed rows run (pag_reuse: on the other guided steps the last v_c - v_perturbed is reused)
                pag_scale_t = pag_scales[i] if pag_scales is not None else 0.0
                run_branch = pag_perturb[i] if pag_scales is not None else False
                if session is not None:
                    session.active = run_branch
                if pag_scale_t > 0:
                    # every branch in one forward: [negative;] conditional, and the perturbed rows forked inside the
                    # transformer at the first perturbed layer (none on a reuse step; with pag_mode="uncond" the
                    # negative rows are perturbed in place); the embeddings are read here, so a callback may change them
                    if self.do_classifier_free_guidance:
                        branch_latents = torch.cat([latents] * 2)
                        branch_prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
                        branch_attention_mask = torch.cat([negative_attention_mask, attention_mask])
                    else:
                        branch_latents, branch_prompt_embeds = latents, prompt_embeds
                        branch_attention_mask = attention_mask
                    branch_pred = self.transformer(
                        hidden_states=branch_latents,
                        timestep=t.expand(branch_latents.shape[0]).to(latents.dtype) / 1000,
                        encoder_hidden_states=branch_prompt_embeds,
                        txt_ids=text_ids,
                        img_ids=latent_image_ids,
                        attention_mask=branch_attention_mask,
                        joint_attention_kwargs=self.joint_attention_kwargs,
                        return_dict=False,
                    )[0]
                    base_rows = branch_latents.shape[0]
                    base_pred, perturbed_rows = branch_pred[:base_rows], branch_pred[base_rows:]
                    neg_noise_pred, noise_pred = (
                        base_pred.chunk(2) if self.do_classifier_free_guidance else (None, base_pred)
                    )
                    if run_branch and plan is not None:
                        pag_delta = guidance_delta(
                            noise_pred, scatter_perturbed(noise_pred, perturbed_rows, plan.sample_index)
                        )
                    noise_pred = combine(
                        noise_pred, pag_delta if plan is not None else None, pag_scale_t, neg_noise_pred, guidance_scale
                    )
                else:
                # HeadHunter <<<
                    noise_pred = self.transformer(
                        hidden_states=latents,
                        timestep=timestep / 1000,
                        encoder_hidden_states=prompt_embeds,
                        txt_ids=text_ids,
                        img_ids=latent_image_ids,
                        attention_mask=attention_mask,
                        joint_attention_kwargs=self.joint_attention_kwargs,
                        return_dict=False,
                    )[0]

                    if self.do_classifier_free_guidance:
                        if negative_image_embeds is not None:
                            self._joint_attention_kwargs["ip_adapter_image_embeds"] = negative_image_embeds
                        neg_noise_pred = self.transformer(
                            hidden_states=latents,
                            timestep=timestep / 1000,
                            encoder_hidden_states=negative_prompt_embeds,
                            txt_ids=negative_text_ids,
                            img_ids=latent_image_ids,
                            attention_mask=negative_attention_mask,
                            joint_attention_kwargs=self.joint_attention_kwargs,
                            return_dict=False,
                        )[0]
                        noise_pred = neg_noise_pred + guidance_scale * (noise_pred - neg_noise_pred)

                # compute the previous noisy sample x_t -> x_t-1
                latents_dtype = latents.dtype
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if latents.dtype != latents_dtype:
                    if torch.backends.mps.is_available():
                        # some platforms (eg. apple mps) misbehave due to a pytorch bug: https://github.com/pytorch/pytorch/pull/99272
                        latents = latents.to(latents_dtype)

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)

                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)

                # call the callback, if provided
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

                if XLA_AVAILABLE:
                    xm.mark_step()

        self._current_timestep = None

        if output_type == "latent":
            image = latents
        else:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
            image = self.vae.decode(latents, return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)

        return ChromaPipelineOutput(images=image)


HeadHunterChromaPipeline.__call__.__doc__ = (
    """
        Generate images with head-level perturbation guidance: `v = v_cond + w_t * (v_cond - v_perturbed)`, plus
        CFG `v_neg + guidance_scale * (v_cond - v_neg)` when `guidance_scale > 1`. On steps where the perturbed branch
        runs, all branches run in one batched forward and the perturbed branch forks from the conditional one at the
        first perturbed layer; other steps are the stock `ChromaPipeline` step.

        Every argument of [`ChromaPipeline.__call__`] keeps its meaning and default. Added:

        Args:"""
    + PAG_ARGS_DOC
    + EXAMPLE_DOC
)
