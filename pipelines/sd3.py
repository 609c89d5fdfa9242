"""``HeadHunterSD3Pipeline``: Stable Diffusion 3 / 3.5 with head-level SoftPAG guidance."""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    XLA_AVAILABLE,
    calculate_shift,
    retrieve_timesteps,
)

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
        >>> from headhunter.pipelines import HeadHunterSD3Pipeline

        >>> pipe = HeadHunterSD3Pipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-3-medium-diffusers", torch_dtype=torch.float16
        ... ).to("cuda")
        >>> image = pipe(
        ...     "a photo of an astronaut riding a horse on mars",
        ...     guidance_scale=0.0,
        ...     pag_heads="L1H10,L11H15,L13H17",
        ...     pag_scale=3.0,
        ...     pag_softness=0.5,
        ...     num_inference_steps=20,
        ... ).images[0]
        ```
"""


class HeadHunterSD3Pipeline(HeadHunterMixin, StableDiffusion3Pipeline):
    r"""
    [`StableDiffusion3Pipeline`] with perturbation guidance on individual attention heads (SoftPAG, HeadHunter).

    Loads like its parent (`from_pretrained`, `from_pipe`, `from_single_file`) and accepts every argument of its
    parent's `__call__`, plus the `pag_*` arguments. Heads are numbered `L{layer}H{head}` over
    `transformer.transformer_blocks`; SD3.5's image-only `attn2` is not addressed. See `head_layout`.

    `share_prefix` (default True) makes the perturbed branch fork from the conditional one at the first perturbed
    layer; False runs it through every block (same result, more work).

    T5 (`text_encoder_3`, `tokenizer_3`) is optional here: a pipeline folder saved without it loads as it is, and
    its place is filled with `max_sequence_length` zero tokens, as the parent does for `text_encoder_3=None`.
    """

    _optional_components = [*StableDiffusion3Pipeline._optional_components, "text_encoder_3", "tokenizer_3"]

    # Copied from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3.StableDiffusion3Pipeline.__call__
    # with the HeadHunter additions between `# HeadHunter >>>` and `# HeadHunter <<<` (the parent lines they replace are
    # kept there as `#|` comments); tests/test_copies.py fails when the parent changes.
    @one_call_per_transformer
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.FloatTensor | None = None,
        prompt_embeds: torch.FloatTensor | None = None,
        negative_prompt_embeds: torch.FloatTensor | None = None,
        pooled_prompt_embeds: torch.FloatTensor | None = None,
        negative_pooled_prompt_embeds: torch.FloatTensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[int, int], None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 256,
        skip_guidance_layers: list[int] = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_stop: float = 0.2,
        skip_layer_guidance_start: float = 0.01,
        mu: float | None = None,
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
    ) -> StableDiffusion3PipelineOutput | tuple:

        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor

        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            prompt_2,
            prompt_3,
            height,
            width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )

        self._guidance_scale = guidance_scale
        self._skip_layer_guidance_scale = skip_layer_guidance_scale
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = joint_attention_kwargs
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
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            prompt_3=prompt_3,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            device=device,
            clip_skip=self.clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            lora_scale=lora_scale,
        )

        if self.do_classifier_free_guidance:
            if skip_guidance_layers is not None:
                original_prompt_embeds = prompt_embeds
                original_pooled_prompt_embeds = pooled_prompt_embeds
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            pooled_prompt_embeds = torch.cat([negative_pooled_prompt_embeds, pooled_prompt_embeds], dim=0)

        # HeadHunter >>>
        # HeadHunter: the perturbation plan (None when no image perturbs any head), its tensors on the device
        plan = self.prepare_perturbation_plan(
            pag, self.do_classifier_free_guidance, text_len=prompt_embeds.shape[1], device=device
        )
        # HeadHunter <<<

        # 4. Prepare latent variables
        num_channels_latents = self.transformer.config.in_channels
        latents = self.prepare_latents(
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
        scheduler_kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", None) and mu is None:
            _, _, height, width = latents.shape
            image_seq_len = (height // self.transformer.config.patch_size) * (
                width // self.transformer.config.patch_size
            )
            mu = calculate_shift(
                image_seq_len,
                self.scheduler.config.get("base_image_seq_len", 256),
                self.scheduler.config.get("max_image_seq_len", 4096),
                self.scheduler.config.get("base_shift", 0.5),
                self.scheduler.config.get("max_shift", 1.16),
            )
            scheduler_kwargs["mu"] = mu
        elif mu is not None:
            scheduler_kwargs["mu"] = mu
        if XLA_AVAILABLE:
            timestep_device = "cpu"
        else:
            timestep_device = device
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler,
            num_inference_steps,
            timestep_device,
            sigmas=sigmas,
            **scheduler_kwargs,
        )
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)
        # HeadHunter >>>
        # HeadHunter: w_t of every step and whether its perturbed pass runs (pag_reuse), known before the loop (the loop
        # reads nothing back from the device); pag_delta: the last v_c - v_perturbed, reused on the steps between
        pag_scales, pag_perturb = pag.step_schedule(timesteps, num_inference_steps) if pag.active else (None, None)
        pag_delta = None
        # HeadHunter <<<

        # 6. Prepare image embeddings
        if (ip_adapter_image is not None and self.is_ip_adapter_active) or ip_adapter_image_embeds is not None:
            ip_adapter_image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )

            if self.joint_attention_kwargs is None:
                self._joint_attention_kwargs = {"ip_adapter_image_embeds": ip_adapter_image_embeds}
            else:
                self._joint_attention_kwargs.update(ip_adapter_image_embeds=ip_adapter_image_embeds)

        # 7. Denoising loop
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

                # HeadHunter >>>
                # HeadHunter: w_t for this step (0: no perturbation term, the stock step runs) and whether the perturbed
                # rows run (pag_reuse: on the other guided steps the last v_c - v_perturbed is reused)
                pag_scale_t = pag_scales[i] if pag_scales is not None else 0.0
                run_branch = pag_perturb[i] if pag_scales is not None else False
                if session is not None:
                    session.active = run_branch
                # HeadHunter <<<

                # expand the latents if we are doing classifier free guidance
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                # broadcast to batch dimension in a way that's compatible with ONNX/Core ML
                timestep = t.expand(latent_model_input.shape[0])
                # on TPU, a view into `timesteps` makes `torch.compile` recompile every step
                if timestep.device.type == "tpu":
                    timestep = timestep.clone()

                noise_pred = self.transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    pooled_projections=pooled_prompt_embeds,
                    joint_attention_kwargs=self.joint_attention_kwargs,
                    return_dict=False,
                )[0]

                # HeadHunter >>>
#|                 # perform guidance
#|                 if self.do_classifier_free_guidance:
#|                     noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
#|                     noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                # perform guidance: v = v_u + g (v_c - v_u) + w_t (v_c - v_perturbed); the perturbed rows come last
                # (pag_mode="uncond": no such rows, the unconditional rows were perturbed, and the CFG formula runs)
                noise_pred_perturbed = None
                if run_branch and plan is not None:
                    noise_pred, noise_pred_perturbed = noise_pred[: plan.base_rows], noise_pred[plan.base_rows :]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                else:
                    noise_pred_uncond, noise_pred_text = None, noise_pred
                if noise_pred_perturbed is not None:
                    pag_delta = guidance_delta(
                        noise_pred_text, scatter_perturbed(noise_pred_text, noise_pred_perturbed, plan.sample_index)
                    )
                noise_pred = combine(
                    noise_pred_text,
                    pag_delta if plan is not None and pag_scale_t > 0 else None,
                    pag_scale_t,
                    noise_pred_uncond,
                    self.guidance_scale,
                )
                if self.do_classifier_free_guidance:
                # HeadHunter <<<
                    should_skip_layers = (
                        True
                        if i > num_inference_steps * skip_layer_guidance_start
                        and i < num_inference_steps * skip_layer_guidance_stop
                        else False
                    )
                    if skip_guidance_layers is not None and should_skip_layers:
                        timestep = t.expand(latents.shape[0])
                        if timestep.device.type == "tpu":
                            timestep = timestep.clone()
                        latent_model_input = latents
                        noise_pred_skip_layers = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep,
                            encoder_hidden_states=original_prompt_embeds,
                            pooled_projections=original_pooled_prompt_embeds,
                            joint_attention_kwargs=self.joint_attention_kwargs,
                            return_dict=False,
                            skip_layers=skip_guidance_layers,
                        )[0]
                        noise_pred = (
                            noise_pred + (noise_pred_text - noise_pred_skip_layers) * self._skip_layer_guidance_scale
                        )

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
                    pooled_prompt_embeds = callback_outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)

                # call the callback, if provided
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

                if XLA_AVAILABLE:
                    xm.mark_step()

        if output_type == "latent":
            image = latents

        else:
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor

            image = self.vae.decode(latents, return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)

        return StableDiffusion3PipelineOutput(images=image)


HeadHunterSD3Pipeline.__call__.__doc__ = (
    """
        Generate images with classifier-free guidance and head-level perturbation guidance:
        `v = v_uncond + guidance_scale * (v_cond - v_uncond) + w_t * (v_cond - v_perturbed)` when
        `guidance_scale > 1`, else `v = v_cond + w_t * (v_cond - v_perturbed)`. All branches of a step run in one
        batched transformer forward; the perturbed branch forks from the conditional one at the first perturbed layer.

        Every argument of [`StableDiffusion3Pipeline.__call__`] keeps its meaning and default. Added:

        Args:"""
    + PAG_ARGS_DOC
    + EXAMPLE_DOC
)
