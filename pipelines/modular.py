"""``HeadHunterModularPipeline``: a diffusers modular pipeline (FLUX.2 Klein base, Qwen-Image, ...) driven with
:class:`~headhunter.guiders.HeadHunterGuidance` behind the call of the HeadHunter pipelines, so the search, the
evaluation and the command line run on these models unchanged.

Wan 2.x (``WanBlocks``) runs as an image model (one frame, the default) or for short videos (``num_frames``): the
wrapper encodes both prompts itself and runs the blocks after the text step, because diffusers 0.42's
``WanTextEncoderStep`` fails (an unbound ``negative_prompt_embeds``) whenever the guider asks for a single prediction
(CFG off and nothing perturbed); see :func:`_wan_embeddings`.

A call is one batched call of the modular pipeline, each image with its own prompt, generator and head set (the
guider perturbs a head set per row of the perturbed pass), under :meth:`HeadHunterGuidance.attached`: the
perturbation is installed once for the call and the perturbed pass reuses the conditional pass's prefix.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from headhunter.attention.perturb import check_scope_layers
from headhunter.guidance import default_cfg_scale
from headhunter.guiders import HeadHunterGuidance
from headhunter.heads import HeadLayout, HeadSet
from headhunter.locking import holding_transformer

__all__ = ["HeadHunterModularPipeline"]


class HeadHunterModularPipeline:
    """Wrap ``modular`` (a ``diffusers.ModularPipeline`` whose blocks take a guider) for head-level guidance.

    Call it like ``HeadHunterSD3Pipeline``: ``pipe(prompts, generator=..., pag_heads=[...one per image...],
    pag_scale=..., guidance_scale=..., num_inference_steps=..., height=..., width=..., output_type="pil" | "pt")``;
    other keyword arguments (``negative_prompt``, ``max_sequence_length``, ...) go to the modular pipeline.
    ``guidance_scale`` ≤ 1 means no classifier-free guidance, as in diffusers' pipelines.
    """

    def __init__(self, modular: Any, name_or_path: str = ""):
        expected = {spec.name for spec in modular.blocks.expected_components}
        if "guider" not in expected:
            raise ValueError(
                f"{name_or_path or type(modular).__name__}: its modular blocks take no guider (a guidance-distilled "
                "model such as FLUX.2 [dev] or FLUX.2 Klein); use headhunter.perturb in your own sampling loop")
        self.modular = modular
        self.transformer = modular.transformer
        self.head_layout = HeadLayout.from_transformer(self.transformer)
        self.name_or_path = name_or_path
        self.share_prefix = True  # the guider's perturbed pass starts from the conditional pass's prefix
        self.video = self.head_layout.model_type == "wan"
        # what runs a call: the whole modular pipeline, or for Wan the blocks after its text step
        self._runner = _without_text_step(modular) if self.video else modular
        self._guider: HeadHunterGuidance | None = None
        self._guider_settings: dict | None = None

    @property
    def default_guidance_scale(self) -> float:
        """CFG scale when none is given: 5 for Wan (which is used with CFG), else off."""
        return default_cfg_scale(self.head_layout.model_type)

    @property
    def vae_scale_factor(self) -> int:
        if self.video:
            return int(self.modular.vae_scale_factor_spatial)
        return int(self.modular.vae_scale_factor)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, *args: Any, **kwargs: Any) -> "HeadHunterModularPipeline":
        self.modular.to(*args, **kwargs)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.modular.set_progress_bar_config(**kwargs)
        if self._runner is not self.modular:
            self._runner.set_progress_bar_config(**kwargs)

    def _guider_for(self, settings: dict) -> HeadHunterGuidance:
        """The pipeline's guider with ``settings``: the one installed when they are unchanged (a search calls with
        the same settings batch after batch), else a new one."""
        if self._guider is None or settings != self._guider_settings or self._runner.guider is not self._guider:
            self._guider, self._guider_settings = HeadHunterGuidance(**settings), settings
            self._runner.update_components(guider=self._guider)
        return self._guider

    def __call__(
        self,
        prompt: str | Sequence[str],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        pag_heads: Any = None,
        pag_scale: float = 3.0,
        pag_softness: float = 1.0,
        pag_target: str = "identity",
        pag_scope: str = "joint",
        pag_interval: Sequence[float] = (0.0, 1.0),
        pag_adaptive_scale: float = 0.0,
        pag_reuse: int = 1,
        pag_mode: str = "cond",
        guidance_scale: float | None = None,
        num_inference_steps: int = 28,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> SimpleNamespace:
        """``callback_on_step_end(pipe, step, timestep, {})`` is called after each denoising step, as in diffusers'
        pipelines (no tensors are passed: the modular loop does not hand them out); an exception it raises ends the
        call, with nothing left installed."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        generators = generator if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
        plans = pag_heads if isinstance(pag_heads, (list, tuple)) and not _is_head_tuple(pag_heads) else [pag_heads] * len(prompts)
        if not len(generators) == len(plans) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts, {len(generators)} generators and {len(plans)} head sets")
        accepted = {spec.name for spec in self.modular.blocks.inputs}
        unknown = sorted(name for name, value in kwargs.items() if value is not None and name not in accepted)
        if unknown:
            raise ValueError(f"{self.name_or_path or 'this pipeline'} does not take {', '.join(unknown)}")
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        if len(prompts) > 1 and "negative_prompt" in accepted and not isinstance(kwargs.get("negative_prompt"), list):
            # diffusers 0.42's Qwen-Image text step encodes a string negative prompt once, not once per prompt, and
            # then refuses the batch (its input step wants both embeddings the same size)
            kwargs["negative_prompt"] = [kwargs.get("negative_prompt") or ""] * len(prompts)
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        cfg = float(guidance_scale) if guidance_scale > 1 else 1.0
        start, stop = (float(x) for x in pag_interval)
        heads_per_image = [HeadSet.coerce(heads).validate(self.head_layout) for heads in plans]
        for heads in heads_per_image:  # before any image is made (the guider perturbs without text_len)
            check_scope_layers(self.head_layout, {head.layer for head in heads}, pag_scope)
        settings = dict(pag_scale=pag_scale, guidance_scale=cfg, pag_softness=pag_softness, pag_target=pag_target,
                        pag_scope=pag_scope, pag_adaptive_scale=pag_adaptive_scale, start=start, stop=stop,
                        pag_reuse=pag_reuse, pag_mode=pag_mode)
        with holding_transformer(self.transformer):
            guider = self._guider_for(settings)
            same = all(str(heads) == str(heads_per_image[0]) for heads in heads_per_image)
            guider.set_heads(heads_per_image[0] if same else heads_per_image)
            common = dict(generator=None if all(g is None for g in generators) else list(generators),
                          num_inference_steps=num_inference_steps, height=height, width=width)
            with guider.attached(self.transformer, getattr(self.modular, "scheduler", None)), \
                    _step_callbacks(self, guider, callback_on_step_end):
                if self.video:
                    frames = self._wan_call(prompts, common, kwargs)
                else:
                    out = self.modular(prompt=prompts, output="images", **common, **kwargs)
                    frames = None
        if frames is not None:  # [images, frames, H, W, 3] floats in [0, 1]
            if output_type == "pt":
                videos = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3).float()
                return SimpleNamespace(images=videos[:, 0], frames=videos)
            videos = [[_to_pil(frame) for frame in video] for video in frames]
            return SimpleNamespace(images=[video[0] for video in videos], frames=videos)
        images = list(out) if isinstance(out, (list, tuple)) else [out]
        if output_type == "pt":
            return SimpleNamespace(images=torch.stack([_to_tensor(image) for image in images]))
        return SimpleNamespace(images=images)

    def _wan_call(self, prompts: list[str], common: dict, kwargs: dict) -> np.ndarray:
        """Wan: both prompts encoded here, then the blocks after the text step; one frame unless ``num_frames``."""
        kwargs = dict(kwargs)
        negative = kwargs.pop("negative_prompt", None)
        max_sequence_length = kwargs.pop("max_sequence_length", 512)
        kwargs.setdefault("num_frames", 1)
        embeds, negative_embeds = _wan_embeddings(self.modular, prompts, negative, max_sequence_length)
        return self._runner(prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, output="videos",
                            output_type="np", **common, **kwargs)


@contextmanager
def _step_callbacks(pipe: Any, guider: HeadHunterGuidance, callback: Callable[..., Any] | None) -> Iterator[None]:
    """Call ``callback(pipe, step, timestep, {})`` when step ``step`` has ended: the guider hears of each step's start
    (``set_state``), so step i − 1 has ended when step i starts, and the last one when the loop's last prediction has
    been combined."""
    if callback is None:
        yield
        return
    set_state, forward = guider.set_state, guider.forward
    last: dict[str, Any] = {}

    def on_set_state(step: int, num_inference_steps: int, timestep: Any) -> None:
        if step > 0:
            callback(pipe, step - 1, last.get("timestep"), {})
        last["timestep"] = timestep
        set_state(step, num_inference_steps, timestep)

    def on_forward(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        if guider._step == guider._num_inference_steps - 1:
            callback(pipe, guider._step, last.get("timestep"), {})
        return out

    guider.set_state, guider.forward = on_set_state, on_forward  # this call's guider only; taken off below
    try:
        yield
    finally:
        del guider.set_state, guider.forward


def _without_text_step(modular: Any) -> Any:
    """A modular pipeline of ``modular``'s blocks after its ``text_encoder`` step, sharing its components."""
    from diffusers.modular_pipelines import SequentialPipelineBlocks

    blocks = modular.blocks
    rest = SequentialPipelineBlocks.from_blocks_dict(
        {name: block for name, block in blocks.sub_blocks.items() if name != "text_encoder"})
    runner = rest.init_pipeline()
    components = {spec.name: getattr(modular, spec.name, None) for spec in rest.expected_components}
    runner.update_components(**{name: value for name, value in components.items() if value is not None})
    return runner


def _wan_embeddings(modular: Any, prompts: list[str], negative: Any, max_sequence_length: int) -> tuple:
    """Wan's conditional and unconditional prompt embeddings, always both. diffusers 0.42's ``WanTextEncoderStep``
    returns an unbound ``negative_prompt_embeds`` (UnboundLocalError) when its pipeline's guider needs one prediction
    only; its own ``encode_prompt`` with ``prepare_unconditional_embeds=True`` is sound, so it is called directly."""
    from diffusers.modular_pipelines.wan.encoders import WanTextEncoderStep

    negatives = negative if isinstance(negative, list) else [negative or ""] * len(prompts)
    return WanTextEncoderStep.encode_prompt(modular, prompts, modular._execution_device, True, negatives,
                                            max_sequence_length)


def _to_pil(frame: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray((np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8))


def _is_head_tuple(value: Any) -> bool:
    """``(13, 17)`` is one head, not a list of per-image head sets."""
    return isinstance(value, tuple) and len(value) in (2, 3) and all(isinstance(v, (int, float)) or v is None for v in value)


def _to_tensor(image: Any) -> torch.Tensor:
    """A PIL image or a [C, H, W] / [H, W, C] array in [0, 1] as a float [3, H, W] tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.float() if image.shape[0] == 3 else image.permute(2, 0, 1).float()
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return tensor.permute(2, 0, 1)
