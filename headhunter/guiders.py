"""``HeadHunterGuidance``: head-level SoftPAG as a diffusers guider, for diffusers' modular pipelines (SD3, FLUX.2,
Qwen-Image, Z-Image, Wan, ...).

Each step it asks the pipeline for up to three predictions — conditional ``v_c``, unconditional ``v_u`` (when CFG is
on) and the perturbed conditional ``v̂`` (the conditional inputs, with the chosen heads perturbed through
:func:`headhunter.perturb`) — and combines them as our pipelines do::

    v = v_u + g·(v_c − v_u) + w_t·(v_c − v̂)        (CFG on, g = guidance_scale)
    v = v_c + w_t·(v_c − v̂)                        (CFG off: g ≤ 1)

with ``w_t`` the PAG scale (lowered by ``pag_adaptive_scale`` as diffusers' PAG does) on the steps in
``[start, stop)`` and 0 elsewhere (then the perturbed pass is not run). Unlike diffusers' ``PerturbedAttentionGuidance``
the perturbed pass always takes the *conditional* inputs (also with CFG off), perturbs individual heads on any
attention backend, and works on SD3's joint attention.

Nothing is left installed between passes: :meth:`HeadHunterGuidance.prepare_models` arms the perturbation for the
denoiser's next call only, and that call takes it off again when it returns, raises or is interrupted (diffusers'
modular loops call ``cleanup_models`` only after a pass that succeeded).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from .attention import around_next_call, check_target_scope, perturb
from .guidance import adaptive_scale, guided_prediction, in_interval
from .heads import HeadSet, load_preset

__all__ = ["HeadHunterGuidance"]


class HeadHunterGuidance(BaseGuidance):
    """Head-level perturbation guidance (SoftPAG) as a ``diffusers.guiders`` guider.

    Args:
        heads: the heads to perturb, ``"L13H17@0.5,L2"`` (``L{layer}H{head}``, see the README's model table).
        pag_scale: ``w``, the perturbation-guidance scale (0 turns the perturbed pass off).
        guidance_scale: ``g``, classifier-free guidance, on when ``g > 1`` (an unconditional pass); ``g ≤ 1`` — 0
            included — is off, as in headhunter's pipelines (diffusers' own guiders would run CFG at g = 0).
        pag_softness: u for heads without their own ``@u``, in [0, 1].
        pag_target: ``identity``, ``uniform``, ``query_mean`` or ``max``.
        pag_scope: ``joint`` or ``image`` (identity only).
        pag_adaptive_scale: ``a`` in ``w_t = max(0, w − a·(1000 − t))``; 0 keeps ``w``.
        start, stop: the fraction of the steps where the perturbed pass runs (``pag_interval``).
        enabled: False turns the guider into plain conditional prediction.

    Saved and loaded with ``save_pretrained`` / ``from_pretrained`` (``guider_config.json``); a search's
    ``selected.json`` becomes one with :meth:`from_preset`.
    """

    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_perturbed"]

    @register_to_config
    def __init__(
        self,
        heads: str = "",
        pag_scale: float = 3.0,
        guidance_scale: float = 1.0,
        pag_softness: float = 1.0,
        pag_target: str = "identity",
        pag_scope: str = "joint",
        pag_adaptive_scale: float = 0.0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        super().__init__(start, stop, enabled)
        for name, value in (("pag_scale", pag_scale), ("guidance_scale", guidance_scale),
                            ("pag_adaptive_scale", pag_adaptive_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= float(pag_softness) <= 1.0:
            raise ValueError(f"pag_softness must be in [0, 1], got {pag_softness!r}")
        check_target_scope(pag_target, pag_scope)
        self.heads = HeadSet.parse(heads) if isinstance(heads, str) else HeadSet.coerce(heads)
        self.pag_scale = float(pag_scale)
        self.guidance_scale = float(guidance_scale)
        self.pag_softness = float(pag_softness)
        self.pag_target = pag_target
        self.pag_scope = pag_scope
        self.pag_adaptive_scale = float(pag_adaptive_scale)
        self._disarm: Callable[[], None] | None = None
        self._w_t: float | None = None  # w_t of the current step (see set_state)

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, **overrides: Any) -> "HeadHunterGuidance":
        """A guider with a preset's heads, PAG scale and softness: a shipped preset name or a preset file, such as a
        search's ``selected.json``. ``overrides`` set any other argument (``guidance_scale=4.5``, ...)."""
        data = load_preset(preset)
        settings = {"heads": str(data["heads"])}
        for key in ("pag_scale", "pag_softness"):
            if key in data:
                settings[key] = data[key]
        return cls(**{**settings, **overrides})

    def set_heads(self, heads: Any) -> None:
        """Perturb ``heads`` from the next step on (its config follows, so ``save_pretrained`` writes them)."""
        self.heads = HeadSet.parse(heads) if isinstance(heads, str) else HeadSet.coerce(heads)
        self.register_to_config(heads=str(self.heads))
        self._w_t = None

    # --- which passes run this step ---------------------------------------------------------------------------------
    def _cfg_on(self) -> bool:
        return self._enabled and self.guidance_scale > 1.0

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        self._w_t = self._scale_at(step, num_inference_steps, timestep)

    def _scale_at(self, step: int | None, num_inference_steps: int | None, timestep: Any) -> float:
        """``w_t`` of a step (0 outside ``[start, stop)`` or when nothing is perturbed). The timestep is read back from
        the device only when the adaptive scale needs it: at most once a step, never with ``pag_adaptive_scale=0``."""
        if not self._enabled or not self.heads or self.pag_scale == 0:
            return 0.0
        if num_inference_steps is not None and not in_interval(step, num_inference_steps, (self._start, self._stop)):
            return 0.0
        if self.pag_adaptive_scale == 0 or timestep is None:
            return adaptive_scale(self.pag_scale, self.pag_adaptive_scale, 1000.0)
        return adaptive_scale(self.pag_scale, self.pag_adaptive_scale, float(torch.as_tensor(timestep).flatten()[0]))

    def _scale_now(self) -> float:
        """``w_t`` of the current step, worked out once in :meth:`set_state`."""
        if getattr(self, "_w_t", None) is None:  # before the first set_state (or after new settings)
            self._w_t = self._scale_at(self._step, self._num_inference_steps, self._timestep)
        return self._w_t

    def _predictions(self) -> list[tuple[int, str]]:
        """(index into the (conditional, unconditional) inputs, prediction name) of each pass, in order."""
        passes = [(0, "pred_cond")]
        if self._cfg_on():
            passes.append((1, "pred_uncond"))
        if self._scale_now() > 0:
            passes.append((0, "pred_cond_perturbed"))  # the conditional inputs, with CFG on or off
        return passes

    @property
    def num_conditions(self) -> int:
        return len(self._predictions())

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared != 2 or not self._cfg_on()

    # --- the guider protocol ------------------------------------------------------------------------------------------
    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list:
        return [self._prepare_batch(data, index, name) for index, name in self._predictions()]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, str | tuple[str, str]]) -> list:
        return [self._prepare_batch_from_block_state(input_fields, data, index, name)
                for index, name in self._predictions()]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        self.cleanup_models(denoiser)  # a pass prepared but never run (its inputs failed) leaves nothing armed
        passes = self._predictions()
        if passes[self._count_prepared - 1][1] == "pred_cond_perturbed":
            settings = dict(softness=self.pag_softness, target=self.pag_target, scope=self.pag_scope)
            self._disarm = around_next_call(denoiser, lambda: perturb(denoiser, self.heads, **settings))

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._disarm is not None:
            self._disarm()
            self._disarm = None

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None,
                pred_cond_perturbed: torch.Tensor | None = None) -> GuiderOutput:
        pred = guided_prediction(pred_cond, pred_cond_perturbed, self._scale_now(), pred_uncond,
                                 self.guidance_scale if pred_uncond is not None else 1.0)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)
