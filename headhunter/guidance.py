"""Combining branch predictions, and the schedules that decide when and how strongly the perturbed branch acts.

Symbols follow PAPER.md: ``v_c`` conditional, ``v_u`` unconditional, ``v̂`` perturbed prediction, ``g`` the CFG scale,
``w`` the perturbation-guidance scale (``pag_scale``), ``a`` the adaptive-scale slope, ``t`` the timestep in [0, 1000].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["adaptive_scale", "check_interval", "default_cfg_scale", "guided_prediction", "in_interval",
           "scatter_perturbed"]

#: Classifier-free guidance where a model is used with it by default (Wan's own pipelines use 5); every other model
#: here runs CFG off unless asked (the paper's searches do).
_DEFAULT_CFG = {"wan": 5.0}


def default_cfg_scale(model_type: str, off: float = 1.0) -> float:
    """The CFG scale a call on ``model_type`` (a key of :data:`headhunter.heads.MODELS`) uses when none is given:
    5 for Wan, else ``off`` (0 or 1, both mean no CFG)."""
    return _DEFAULT_CFG.get(model_type, off)


def guided_prediction(
    v_cond: torch.Tensor,
    v_pert: torch.Tensor | None,
    pag_scale: float | torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """``v = v_u + g·(v_c − v_u) + w·(v_c − v̂)`` with CFG, ``v = v_c + w·(v_c − v̂)`` without.

    ``v_pert`` None (branch not run this step) drops the perturbation term — and then the result is the stock CFG
    step, computed as diffusers computes it (in the model's dtype). With the perturbation term the three branches are
    combined in at least fp32 and the result cast back: in bf16, ``w·(v_c − v̂)`` with w up to 8 would carry the
    rounding of two nearly equal predictions eight-fold. ``v_uncond`` None drops CFG. ``pag_scale`` may be a 0-d
    tensor (a scale computed on the device), which is never read back.
    """
    if v_pert is None or not isinstance(pag_scale, torch.Tensor) and pag_scale == 0:
        if v_uncond is None:
            return v_cond
        return v_uncond + guidance_scale * (v_cond - v_uncond)
    wide = torch.promote_types(v_cond.dtype, torch.float32)
    c = v_cond.to(wide)
    v = c if v_uncond is None else v_uncond.to(wide) + guidance_scale * (c - v_uncond.to(wide))
    return (v + pag_scale * (c - v_pert.to(wide))).to(v_cond.dtype)


def scatter_perturbed(v_cond: torch.Tensor, v_pert_rows: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """Full-batch ``v̂``: the perturbed prediction for the images that perturb heads, ``v_c`` for the others (so their
    guidance term is zero). ``samples`` (a long tensor on ``v_cond``'s device) says which image each perturbed row
    belongs to; None means every image, in order, and then no copy of ``v_c`` is made."""
    if samples is None:
        return v_pert_rows.to(v_cond.dtype)
    return v_cond.index_copy(0, samples, v_pert_rows.to(v_cond.dtype))


def adaptive_scale(pag_scale: float, pag_adaptive_scale: float, t: float) -> float:
    """diffusers' adaptive PAG scale: ``w_t = max(0, w − a·(1000 − t))``; ``a = 0`` keeps ``w``."""
    if pag_adaptive_scale == 0:
        return float(pag_scale)
    return max(0.0, float(pag_scale) - float(pag_adaptive_scale) * (1000.0 - float(t)))


def check_interval(interval: Sequence[float]) -> tuple[float, float]:
    """Validate ``pag_interval = (start, end)``, fractions of the denoising steps with 0 ≤ start ≤ end ≤ 1."""
    try:
        start, end = (float(x) for x in interval)
    except (TypeError, ValueError):
        raise ValueError(f"pag_interval must be two fractions (start, end), got {interval!r}") from None
    if not (0.0 <= start <= end <= 1.0) or math.isnan(start) or math.isnan(end):
        raise ValueError(f"pag_interval must satisfy 0 <= start <= end <= 1, got {interval!r}")
    return start, end


def in_interval(step_index: int, num_steps: int, interval: tuple[float, float]) -> bool:
    """Whether step ``i`` of ``n`` lies in the interval: ``start ≤ i/n < end``."""
    start, end = interval
    fraction = step_index / max(1, num_steps)
    return start <= fraction < end
