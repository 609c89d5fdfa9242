"""Combining branch predictions, and the schedules that decide when and how strongly the perturbed branch acts.

Symbols follow PAPER.md: ``v_c`` conditional, ``v_u`` unconditional, ``v̂`` perturbed prediction, ``g`` the CFG scale,
``w`` the perturbation-guidance scale (``pag_scale``), ``a`` the adaptive-scale slope, ``t`` the timestep in [0, 1000].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["PAG_MODES", "adaptive_scale", "check_interval", "check_mode", "check_reuse", "combine", "default_cfg_scale",
           "guidance_delta", "guided_prediction", "in_interval", "passes_per_step", "perturbed_steps", "runs_perturbed",
           "scatter_perturbed"]

#: Which prediction carries the perturbation: ``"cond"`` — a perturbed copy of the conditional pass, ``v̂`` (the
#: paper; a pass of its own) — or ``"uncond"`` — the unconditional pass itself, perturbed (``v̂_u``; with CFG on, a
#: guided step then costs exactly CFG's two passes).
PAG_MODES = ("cond", "uncond")

#: Classifier-free guidance where a model is used with it by default (Wan's own pipelines use 5); every other model
#: here runs CFG off unless asked (the paper's searches do).
_DEFAULT_CFG = {"wan": 5.0}


def default_cfg_scale(model_type: str, off: float = 1.0) -> float:
    """The CFG scale a call on ``model_type`` (a key of :data:`headhunter.heads.MODELS`) uses when none is given:
    5 for Wan, else ``off`` (0 or 1, both mean no CFG)."""
    return _DEFAULT_CFG.get(model_type, off)


def guidance_delta(v_cond: torch.Tensor, v_pert: torch.Tensor) -> torch.Tensor:
    """The perturbation-guidance direction ``Δ = v_c − v̂``, in at least fp32 (in bf16 the difference of two nearly
    equal predictions loses most of its bits; ``w·Δ`` with w up to 8 would carry that rounding eight-fold). With
    ``pag_reuse = k`` it is computed on every k-th guided step and reused in between."""
    wide = torch.promote_types(v_cond.dtype, torch.float32)
    return v_cond.to(wide) - v_pert.to(wide)


def combine(
    v_cond: torch.Tensor,
    delta: torch.Tensor | None,
    pag_scale: float | torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """``v = v_u + g·(v_c − v_u) + w·Δ`` with CFG, ``v = v_c + w·Δ`` without, ``Δ`` from :func:`guidance_delta`
    (this step's or, with ``pag_reuse``, the last one computed).

    ``delta`` None (or ``w = 0``) drops the perturbation term — and then the result is the stock CFG step, computed
    as diffusers computes it (in the model's dtype). With the term the branches are combined in ``Δ``'s (≥ fp32)
    dtype and the result cast back. ``v_uncond`` None drops CFG. ``pag_scale`` may be a 0-d tensor (a scale computed
    on the device), which is never read back.
    """
    if delta is None or not isinstance(pag_scale, torch.Tensor) and pag_scale == 0:
        if v_uncond is None:
            return v_cond
        return v_uncond + guidance_scale * (v_cond - v_uncond)
    c = v_cond.to(delta.dtype)
    v = c if v_uncond is None else v_uncond.to(delta.dtype) + guidance_scale * (c - v_uncond.to(delta.dtype))
    return (v + pag_scale * delta).to(v_cond.dtype)


def guided_prediction(
    v_cond: torch.Tensor,
    v_pert: torch.Tensor | None,
    pag_scale: float | torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """``v = v_u + g·(v_c − v_u) + w·(v_c − v̂)`` with CFG, ``v = v_c + w·(v_c − v̂)`` without: :func:`combine` with
    this step's ``Δ = v_c − v̂``. ``v_pert`` None (branch not run this step) drops the perturbation term.

    With ``pag_mode="uncond"`` the perturbation sits in the unconditional prediction instead, and the step is CFG's
    own formula on it: ``v = v̂_u + g·(v_c − v̂_u)`` — this function with ``v_pert=None`` and ``v_uncond=v̂_u``.
    Written as ``v_c + (g − 1)·(v_c − v_u) + (g − 1)·(v_u − v̂_u)``, it is the exact mode with the perturbation's
    weight tied to ``g − 1`` (and measured on the unconditional prediction): ``w`` does not enter.
    """
    delta = None if v_pert is None else guidance_delta(v_cond, v_pert)
    return combine(v_cond, delta, pag_scale, v_uncond, guidance_scale)


def runs_perturbed(guided_index: int, pag_reuse: int) -> bool:
    """``pag_reuse = k``: whether the ``j``-th guided step (counting from 0, steps with ``w_t > 0`` only) runs the
    perturbed pass — every k-th, starting with the first; the others reuse the last ``Δ``."""
    return guided_index % pag_reuse == 0


def perturbed_steps(scales: Sequence[float], pag_reuse: int = 1) -> list[bool]:
    """For each step, given its ``w_t`` (0 outside the interval): whether the perturbed pass runs
    (:func:`runs_perturbed` over the guided steps)."""
    flags, guided = [], 0
    for w_t in scales:
        flags.append(w_t > 0 and runs_perturbed(guided, pag_reuse))
        guided += w_t > 0
    return flags


def passes_per_step(num_steps: int, interval: Sequence[float] = (0.0, 1.0), pag_reuse: int = 1,
                    pag_mode: str = "cond", cfg: bool = False) -> float:
    """Transformer passes per denoising step of one guided image, on average: 1 (conditional), + 1 with CFG, + the
    share of steps that run the perturbed pass (none with ``pag_mode="uncond"``, which perturbs the unconditional
    pass). An adaptive scale that reaches 0 early makes it less; prefix sharing makes each perturbed pass cheaper."""
    start, end = check_interval(interval)
    base = 2.0 if cfg else 1.0
    if pag_mode == "uncond" or num_steps < 1:
        return base
    scales = [1.0 if in_interval(i, num_steps, (start, end)) else 0.0 for i in range(num_steps)]
    return base + sum(perturbed_steps(scales, pag_reuse)) / num_steps


def check_reuse(pag_reuse: object) -> int:
    """Validate ``pag_reuse``: a whole number k ≥ 1 (1 = exact, the perturbed pass on every guided step)."""
    if isinstance(pag_reuse, bool) or not isinstance(pag_reuse, int) or pag_reuse < 1:
        raise ValueError(f"pag_reuse must be a whole number >= 1 (1 = exact), got {pag_reuse!r}")
    return pag_reuse


def check_mode(pag_mode: object, pag_reuse: int = 1) -> str:
    """Validate ``pag_mode`` (one of :data:`PAG_MODES`) together with ``pag_reuse``."""
    if pag_mode not in PAG_MODES:
        raise ValueError(f"pag_mode must be one of {', '.join(map(repr, PAG_MODES))}, got {pag_mode!r}")
    if pag_mode == "uncond" and pag_reuse != 1:
        raise ValueError("pag_reuse applies to the separate perturbed pass of pag_mode='cond'; pag_mode='uncond' "
                         "has none (its steps already cost CFG's two passes)")
    return pag_mode


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
