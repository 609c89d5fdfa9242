"""Validation of the ``pag_*`` pipeline arguments, shared by the SD3 and FLUX pipelines.

Everything a user can get wrong is checked here, before a pipeline touches its transformer, so a bad call raises a
ValueError that names the problem and leaves nothing modified.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .attention import check_target_scope
from .guidance import adaptive_scale, check_interval, check_mode, check_reuse, in_interval, perturbed_steps
from .heads import Head, HeadLayout, HeadSet

__all__ = ["MAX_IMAGE_SIDE", "PAGArguments", "check_image_size", "classifier_free_guidance_on", "heads_per_image",
           "image_size_rule", "layers_from_applied"]


def _is_per_image_list(value: Any) -> bool:
    """A list of head sets (one per image) rather than one head set written as ``[(13, 17), ...]``."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    return any(isinstance(item, (str, Path, HeadSet, Mapping)) or item is None or _is_tuple_list(item) for item in value)


def _is_tuple_list(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(x, (list, tuple, Head)) for x in item)


def layers_from_applied(applied: Sequence[int | str] | int | str | None, layout: HeadLayout) -> HeadSet:
    """diffusers-style ``pag_applied_layers`` (ints, or ``"blocks.N"`` / ``"single_blocks.N"`` for FLUX's single-stream
    block N), matched exactly, as every head of those layers."""
    if applied is None:
        return HeadSet()
    if isinstance(applied, (int, str)):
        applied = [applied]
    heads = []
    for item in applied:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"pag_applied_layers entry {item!r} must be an int or 'blocks.N'")
        if isinstance(item, int):
            layer = item
        else:
            match = re.fullmatch(r"\s*(single_)?(?:transformer_)?blocks\.(\d+)\s*", item)
            if match is None:
                raise ValueError(f"pag_applied_layers entry {item!r} must be an int, 'blocks.N' or 'single_blocks.N'")
            layer = int(match.group(2))
            if match.group(1):
                if not layout.num_double_layers:
                    raise ValueError(f"pag_applied_layers entry {item!r}: this model has no single-stream blocks")
                layer += layout.num_double_layers
        heads.append(Head(layer, None))
    return HeadSet(heads).validate(layout)


def heads_per_image(pag_heads: Any, num_prompts: int, num_images_per_prompt: int,
                    layout: HeadLayout | None = None) -> list[HeadSet]:
    """One HeadSet per generated image. A per-image list may name one entry per image or one per prompt (then each
    prompt's images share it). With ``layout``, an exported folder searched on another layout is refused."""
    from .sharing import check_made_for, is_export, load_export

    def resolve(item: Any) -> HeadSet:
        if layout is not None and is_export(item):  # read once: its layout is checked and its heads used
            export = load_export(item)
            check_made_for(export.get("made_for"), layout, f"pag_heads={str(item)!r}")
            return export["heads"]
        return HeadSet.coerce(item)

    total = num_prompts * num_images_per_prompt
    if not _is_per_image_list(pag_heads):
        return [resolve(pag_heads)] * total
    sets = [resolve(item) for item in pag_heads]
    if len(sets) == total:
        return sets
    if len(sets) == num_prompts:
        return [s for s in sets for _ in range(num_images_per_prompt)]
    raise ValueError(
        f"pag_heads has {len(sets)} head sets but the call generates {total} images ({num_prompts} prompts × "
        f"{num_images_per_prompt}); give one per image or one per prompt"
    )


@dataclass(frozen=True)
class PAGArguments:
    """The validated ``pag_*`` arguments of one call.

    ``softness`` holds one ``{(layer, head): u}`` per generated image; ``active`` is False when the perturbed branch
    never runs (no heads, every u = 0, or ``pag_scale = 0``).
    """

    softness: tuple[dict, ...]
    pag_scale: float
    pag_target: str
    pag_scope: str
    pag_interval: tuple[float, float]
    pag_adaptive_scale: float
    pag_reuse: int = 1
    pag_mode: str = "cond"

    @property
    def active(self) -> bool:
        return self.pag_scale != 0 and any(u > 0 for heads in self.softness for u in heads.values())

    def scale_at(self, step_index: int, num_steps: int, t: Any) -> float:
        """``w_t`` for this step: 0 outside ``pag_interval`` (the branch is then not computed), else the adaptive scale."""
        if not in_interval(step_index, num_steps, self.pag_interval):
            return 0.0
        return adaptive_scale(self.pag_scale, self.pag_adaptive_scale, float(t))

    def step_scales(self, timesteps: Any, num_steps: int) -> list[float]:
        """``w_t`` for every step, computed before the denoising loop so the loop never reads a device tensor back.
        Only the adaptive scale needs the timesteps' values (one transfer, here)."""
        values = timesteps.tolist() if self.pag_adaptive_scale != 0 else [1000.0] * len(timesteps)
        return [self.scale_at(i, num_steps, t) for i, t in enumerate(values)]

    def step_schedule(self, timesteps: Any, num_steps: int) -> tuple[list[float], list[bool]]:
        """``w_t`` of every step (:meth:`step_scales`) and whether its perturbed pass runs (``pag_reuse``: every
        k-th guided step; the steps between reuse the last ``v_c − v̂``)."""
        scales = self.step_scales(timesteps, num_steps)
        return scales, perturbed_steps(scales, self.pag_reuse)

    def check_classifier_free_guidance(self, on: bool, how: str = "guidance_scale > 1") -> None:
        """ValueError when ``pag_mode="uncond"`` is asked for without an unconditional pass to perturb."""
        if self.active and self.pag_mode == "uncond" and not on:
            raise ValueError(f"pag_mode='uncond' perturbs the unconditional pass, which runs only with classifier-free "
                             f"guidance ({how}); use pag_mode='cond' without it")

    @classmethod
    def from_call(
        cls,
        layout: HeadLayout,
        *,
        pag_heads: Any,
        pag_scale: float,
        pag_softness: float,
        pag_target: str,
        pag_scope: str,
        pag_interval: Sequence[float],
        pag_adaptive_scale: float,
        pag_applied_layers: Any,
        num_prompts: int,
        num_images_per_prompt: int,
        pag_reuse: int = 1,
        pag_mode: str = "cond",
    ) -> "PAGArguments":
        for name, value in (("pag_scale", pag_scale), ("pag_adaptive_scale", pag_adaptive_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name, value in (("pag_scale", pag_scale), ("pag_adaptive_scale", pag_adaptive_scale)):
            if value < 0:
                # a negative w would guide *towards* the weak model; diffusers' PAG has no such mode either
                raise ValueError(f"{name} must be >= 0, got {value}")
        check_target_scope(pag_target, pag_scope)
        interval = check_interval(pag_interval)
        reuse = check_reuse(pag_reuse)
        mode = check_mode(pag_mode, reuse)
        applied = layers_from_applied(pag_applied_layers, layout)
        per_image = heads_per_image(pag_heads, num_prompts, num_images_per_prompt, layout)
        softness = tuple((heads | applied).softness_map(layout, pag_softness) for heads in per_image)
        return cls(softness, float(pag_scale), pag_target, pag_scope, interval, float(pag_adaptive_scale), reuse, mode)


def classifier_free_guidance_on(call: Mapping[str, Any], family: str) -> bool:
    """Whether a call with these arguments runs an unconditional pass: FLUX.1 with ``true_cfg_scale > 1`` and a
    negative prompt (its ``guidance_scale`` is the distilled embedding), every other model with
    ``guidance_scale > 1``."""
    if family == "flux":
        return float(call.get("true_cfg_scale") or 1.0) > 1 and bool(call.get("negative_prompt"))
    return float(call.get("guidance_scale") or 1.0) > 1


#: The largest side accepted anywhere: beyond it no model here was trained, and the latents alone exhaust memory.
MAX_IMAGE_SIDE = 8192


def image_size_rule(pipe: Any) -> tuple[int, int]:
    """(the multiple, the largest side) in pixels ``pipe`` can generate: a latent patch's pixels (VAE factor × patch
    size), and :data:`MAX_IMAGE_SIDE` or, for SD3, the transformer's position-embedding grid if smaller."""
    config = pipe.transformer.config
    family = HeadLayout.from_transformer(pipe.transformer).model_type
    # FLUX.1's, Chroma's and FLUX.2's pipelines pack 2×2 latent patches themselves; Z-Image lists its patch sizes;
    # Wan's is (frames, height, width)
    if family in ("flux", "chroma", "flux2"):
        patch = 2
    elif family == "wan":
        patch = int(config.patch_size[1])
    else:
        patch = int(config.all_patch_size[0] if family == "zimage" else config.patch_size)
    multiple = int(pipe.vae_scale_factor) * patch
    largest = MAX_IMAGE_SIDE
    if getattr(config, "pos_embed_max_size", None):
        largest = min(largest, int(config.pos_embed_max_size) * multiple)
    return multiple, largest


def check_image_size(pipe: Any, height: int | None, width: int | None) -> None:
    """ValueError unless ``height`` × ``width`` is a size ``pipe`` can generate: positive, at most
    :data:`MAX_IMAGE_SIDE`, a multiple of the latent patch (VAE factor × patch size) and, for SD3, within the
    transformer's position-embedding grid (:func:`image_size_rule`). ``None`` means the pipeline's default."""
    multiple, largest = image_size_rule(pipe)
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number of pixels, got {value!r}")
        if value > largest:
            raise ValueError(f"{name} {value} is larger than this model can generate ({largest} pixels at most)")
        if value % multiple:
            raise ValueError(f"{name} {value} must be a multiple of {multiple} for this model "
                             f"(e.g. {max(multiple, value // multiple * multiple)})")

