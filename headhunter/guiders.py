"""``HeadHunterGuidance``: head-level SoftPAG as a diffusers guider, for diffusers' modular pipelines (SD3, FLUX.2,
Qwen-Image, Z-Image, Wan, ...).

Each step it asks the pipeline for up to three predictions — conditional ``v_c``, unconditional ``v_u`` (when CFG is
on) and the perturbed conditional ``v̂`` (the conditional inputs, with the chosen heads perturbed through
:func:`headhunter.perturb`) — and combines them as our pipelines do::

    v = v_u + g·(v_c − v_u) + w_t·(v_c − v̂)        (CFG on, g = guidance_scale)
    v = v_c + w_t·(v_c − v̂)                        (CFG off: g ≤ 1)

with ``w_t`` the PAG scale (lowered by ``pag_adaptive_scale`` as diffusers' PAG does) on the steps in
``[start, stop)`` and 0 elsewhere (then the perturbed pass is not run). Cheap modes: with ``pag_reuse = k`` the
perturbed pass runs on every k-th guided step and ``v_c − v̂`` of the last one is reused between; with
``pag_mode="uncond"`` (CFG on) the unconditional pass itself is perturbed and ``v = v̂_u + g·(v_c − v̂_u)``.
Unlike diffusers' ``PerturbedAttentionGuidance`` the perturbed pass always takes the *conditional* inputs (also with
CFG off), perturbs individual heads on any attention backend, and works on SD3's joint attention.

Two ways to run it:

- **Attached** (fast; what :class:`~headhunter.pipelines.HeadHunterModularPipeline` does)::

      with guider.attached(pipe.transformer, pipe.scheduler):
          image = pipe(prompt=..., ...)

  The perturbation is installed once for the whole call (switched on for the perturbed passes only, so a compiled
  transformer keeps its graphs), the per-layer u is made once on the execution device, and with ``share_prefix``
  the perturbed pass starts from the conditional pass's activations at the first perturbed layer instead of running
  the blocks before it again (:mod:`headhunter.attention.prefix`). Everything comes off when the block ends or raises.
- **Bare** (a guider given to a modular pipeline as is): :meth:`HeadHunterGuidance.prepare_models` installs the
  perturbation for the denoiser's next call only, and that call takes it off again when it returns, raises or is
  interrupted (diffusers' modular loops call ``cleanup_models`` only after a pass that succeeded). No prefix reuse.

Either way the step reads nothing back from the device: ``w_t`` is a Python number. With the adaptive scale it comes
from the attached scheduler's schedule (read once per call), from a timestep on the CPU, or else it is a 0-d tensor
computed on the timestep's device (the perturbed pass then runs on every step of the interval, as whether ``w_t``
has reached 0 is not known on the host; end the interval with ``stop`` to save those passes).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from .attention import around_next_call, check_target_scope, perturb
from .attention.install import PerturbationSession
from .attention.perturb import per_row_heads, perturbation
from .guidance import adaptive_scale, check_mode, check_reuse, combine, guidance_delta, in_interval, runs_perturbed
from .heads import HeadLayout, HeadSet, load_preset, unwrap_compiled
from .sharing import check_made_for

__all__ = ["HeadHunterGuidance"]


class HeadHunterGuidance(BaseGuidance):
    """Head-level perturbation guidance (SoftPAG) as a ``diffusers.guiders`` guider.

    Args:
        heads: the heads to perturb, ``"L13H17@0.5,L2"`` (``L{layer}H{head}``, see the README's model table); or a
            list of head sets, one per image of the batch (``["L13H17", "", "L2"]``; an image without heads gets no
            perturbation term), like ``pag_heads`` in headhunter's pipelines.
        pag_scale: ``w``, the perturbation-guidance scale (0 turns the perturbed pass off).
        guidance_scale: ``g``, classifier-free guidance, on when ``g > 1`` (an unconditional pass); ``g ≤ 1`` — 0
            included — is off, as in headhunter's pipelines (diffusers' own guiders would run CFG at g = 0).
        pag_softness: u for heads without their own ``@u``, in [0, 1].
        pag_target: ``identity``, ``uniform``, ``query_mean`` or ``max``.
        pag_scope: ``joint`` or ``image`` (identity only).
        pag_adaptive_scale: ``a`` in ``w_t = max(0, w − a·(1000 − t))``; 0 keeps ``w``.
        start, stop: the fraction of the steps where the perturbed pass runs (``pag_interval``).
        pag_reuse: k ≥ 1: the perturbed pass runs on every k-th guided step only, and the last ``v_c − v̂`` is reused
            on the steps between (they cost what an unguided or CFG step costs); 1 is exact.
        pag_mode: ``"cond"`` (a perturbed pass of the conditional inputs, the paper) or ``"uncond"`` (needs
            ``guidance_scale > 1``): the unconditional pass is perturbed instead and combined as CFG,
            ``v = v̂_u + g·(v_c − v̂_u)`` — two passes per step, the perturbation weighted by ``g − 1``; ``pag_scale``
            then only switches it on (> 0) or off.
        enabled: False turns the guider into plain conditional prediction.
        share_prefix: when attached (:meth:`attached`), start the perturbed pass from the conditional pass's
            activations at the first perturbed layer (True), at layer n or the first perturbed layer, whichever comes
            first (an int: keeps a compiled transformer on one graph while the heads move), or not at all (False).
            Bit for bit the same prediction; the blocks before that layer are not run again.
        made_for: the layout the heads were searched on, ``"sd3:24x24"`` (type:layers x heads; an export's
            ``guider_config.json`` records it): a transformer with another layout is refused, since head numbers do
            not carry over. None (the default) uses the heads on any transformer they fit.

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
        share_prefix: bool | int = True,
        pag_reuse: int = 1,
        pag_mode: str = "cond",
        made_for: str | None = None,
    ):
        super().__init__(start, stop, enabled)
        for name, value in (("pag_scale", pag_scale), ("guidance_scale", guidance_scale),
                            ("pag_adaptive_scale", pag_adaptive_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= float(pag_softness) <= 1.0:
            raise ValueError(f"pag_softness must be in [0, 1], got {pag_softness!r}")
        check_target_scope(pag_target, pag_scope)
        self.pag_reuse = check_reuse(pag_reuse)
        self.pag_mode = check_mode(pag_mode, self.pag_reuse)
        if self.pag_mode == "uncond" and float(guidance_scale) <= 1.0:
            raise ValueError("pag_mode='uncond' perturbs the unconditional pass, which runs only with classifier-free "
                             f"guidance (guidance_scale > 1), got guidance_scale={guidance_scale!r}")
        self.heads = _head_sets(heads)
        self.pag_scale = float(pag_scale)
        self.guidance_scale = float(guidance_scale)
        self.pag_softness = float(pag_softness)
        self.pag_target = pag_target
        self.pag_scope = pag_scope
        self.pag_adaptive_scale = float(pag_adaptive_scale)
        if isinstance(share_prefix, bool) or isinstance(share_prefix, int) and share_prefix >= 0:
            self.share_prefix = share_prefix
        else:
            raise ValueError(f"share_prefix must be True, False or a layer number >= 0, got {share_prefix!r}")
        self.made_for = made_for
        self._layout_checked: int | None = None  # id of the transformer made_for was checked against
        self._disarm: Callable[[], None] | None = None
        self._w_t: float | torch.Tensor | None = None  # w_t of the current step (see set_state)
        self._attached: tuple[torch.nn.Module, PerturbationSession] | None = None
        self._scheduler: Any = None  # the attached call's scheduler, for the adaptive scale's schedule
        self._schedule: list[float] | None = None
        # pag_reuse, per call: guided steps so far, whether this step runs the perturbed pass, the last v_c − v̂
        self._guided, self._perturb_now, self._delta = 0, None, None

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
        """Perturb ``heads`` (one head set, or a list of them, one per image) from the next call on (its config
        follows, so ``save_pretrained`` writes them). Not while attached: the installed perturbation is the old one."""
        if self._attached is not None:
            raise RuntimeError("set_heads inside guider.attached(...): set the heads before the block")
        self.heads = _head_sets(heads)
        self.register_to_config(heads=[str(h) for h in self.heads] if isinstance(self.heads, list) else str(self.heads))
        self._w_t, self._perturb_now, self._delta = None, None, None

    @property
    def perturbs(self) -> bool:
        """Whether some image has heads to perturb."""
        return any(self.heads) if isinstance(self.heads, list) else bool(self.heads)

    @contextmanager
    def attached(self, denoiser: torch.nn.Module, scheduler: Any = None) -> Iterator["HeadHunterGuidance"]:
        """Install the perturbation on ``denoiser`` once for the body (a whole pipeline call), switched on for the
        perturbed passes only, with prefix reuse (``share_prefix``); taken off when the body ends or raises. The
        transformer's lock is held throughout. Without it the guider installs per perturbed pass.

        ``scheduler`` (the pipeline's): with the adaptive scale, its timesteps are read once per call instead of a
        timestep per step (which waits for an accelerator)."""
        if self._attached is not None:
            raise RuntimeError("this guider is already attached; attach blocks do not nest")
        self._scheduler, self._schedule = scheduler, None
        try:
            if not self.perturbs or not self._enabled:
                yield self
                return
            self._check_layout(denoiser)
            settings = dict(softness=self.pag_softness, target=self.pag_target, scope=self.pag_scope,
                            share_prefix=self.share_prefix)
            with perturbation(denoiser, self.heads, **settings) as session:
                self._attached = (unwrap_compiled(denoiser), session)
                try:
                    yield self
                finally:
                    self._attached = None
                    self.cleanup_models(denoiser)
        finally:
            self._scheduler, self._schedule = None, None
            self._perturb_now, self._delta = None, None

    # --- which passes run this step ---------------------------------------------------------------------------------
    def _cfg_on(self) -> bool:
        return self._enabled and self.guidance_scale > 1.0

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        previous = self._step
        super().set_state(step, num_inference_steps, timestep)
        self._w_t = self._scale_at(step, num_inference_steps, timestep)
        if step == 0 or previous is None or step <= previous:  # a new call: nothing of the last one is reused
            self._guided, self._delta = 0, None
        self._perturb_now = _positive(self._w_t) and runs_perturbed(self._guided, self.pag_reuse)
        self._guided += _positive(self._w_t)

    def _scale_at(self, step: int | None, num_inference_steps: int | None, timestep: Any) -> float | torch.Tensor:
        """``w_t`` of a step: 0 outside ``[start, stop)`` or when nothing is perturbed, else ``w``, lowered by the
        adaptive scale to ``max(0, w − a·(1000 − t))``. A timestep on an accelerator is never read back in the step:
        attached with the scheduler, the whole schedule is read once per call; else ``w_t`` is a 0-d tensor computed
        on the device (and the perturbed pass runs, as whether it reached 0 is not known on the host)."""
        if not self._enabled or not self.perturbs or self.pag_scale == 0:
            return 0.0
        if num_inference_steps is not None and not in_interval(step, num_inference_steps, (self._start, self._stop)):
            return 0.0
        if self.pag_adaptive_scale == 0 or timestep is None:
            return adaptive_scale(self.pag_scale, self.pag_adaptive_scale, 1000.0)
        t = self._timestep_on_host(step, timestep)
        if t is None:
            t = torch.as_tensor(timestep).flatten()[0].float()
            return (self.pag_scale - self.pag_adaptive_scale * (1000.0 - t)).clamp(min=0.0)
        return adaptive_scale(self.pag_scale, self.pag_adaptive_scale, t)

    def _timestep_on_host(self, step: int | None, timestep: Any) -> float | None:
        """The timestep as a Python number where that costs no device sync: from the attached scheduler's schedule
        (read once per call), a number, or a CPU tensor; else None."""
        scheduler = self._scheduler
        if scheduler is not None and step is not None and getattr(scheduler, "timesteps", None) is not None:
            if self._schedule is None or step == 0:
                self._schedule = scheduler.timesteps.detach().float().cpu().tolist()  # one read per call
            if step < len(self._schedule):
                return self._schedule[step]
        if not isinstance(timestep, torch.Tensor):
            return float(timestep)
        if timestep.device.type == "cpu":
            return float(timestep.flatten()[0])
        return None

    def _scale_now(self) -> float | torch.Tensor:
        """``w_t`` of the current step, worked out once in :meth:`set_state`."""
        if getattr(self, "_w_t", None) is None:  # before the first set_state (or after new settings)
            self._w_t = self._scale_at(self._step, self._num_inference_steps, self._timestep)
        return self._w_t

    def _perturbs_now(self) -> bool:
        """Whether this step perturbs a pass: ``w_t > 0`` and, with ``pag_reuse = k``, a k-th guided step."""
        if self._perturb_now is None:  # before the first set_state (or after new settings)
            return _positive(self._scale_now())
        return self._perturb_now

    def _predictions(self) -> list[tuple[int, str]]:
        """(index into the (conditional, unconditional) inputs, prediction name) of each pass, in order."""
        passes = [(0, "pred_cond")]
        if self._cfg_on():
            passes.append((1, "pred_uncond"))  # perturbed itself with pag_mode="uncond"
        if self.pag_mode == "cond" and self._perturbs_now():
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
        name = passes[self._count_prepared - 1][1]
        if name == "pred_uncond" and self.pag_mode == "uncond" and self._perturbs_now():
            name = "pred_cond_perturbed"  # the pass to perturb (its inputs are the unconditional ones)
        if self._attached is not None and self._attached[0] is unwrap_compiled(denoiser):
            session = self._attached[1]
            if name == "pred_cond_perturbed":
                replay = "replay" if session.prefix_layer and self.pag_mode == "cond" else None
                self._disarm = around_next_call(denoiser, lambda: session.branch(perturbed=True, prefix=replay))
            elif name == "pred_cond" and session.prefix_layer and passes[-1][1] == "pred_cond_perturbed":
                self._disarm = around_next_call(denoiser, lambda: session.branch(perturbed=False, prefix="record"))
        elif name == "pred_cond_perturbed":
            self._check_layout(denoiser)
            settings = dict(softness=self.pag_softness, target=self.pag_target, scope=self.pag_scope)
            self._disarm = around_next_call(denoiser, lambda: perturb(denoiser, self.heads, **settings))

    def _check_layout(self, denoiser: torch.nn.Module) -> None:
        """ValueError when ``made_for`` names another layout than ``denoiser``'s (checked once per transformer)."""
        module = unwrap_compiled(denoiser)
        if self.made_for and self._layout_checked != id(module):
            check_made_for(self.made_for, HeadLayout.from_transformer(module), "this guider")
            self._layout_checked = id(module)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._disarm is not None:
            self._disarm()
            self._disarm = None

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None,
                pred_cond_perturbed: torch.Tensor | None = None) -> GuiderOutput:
        w_t = self._scale_now()
        delta = None
        if pred_cond_perturbed is not None:
            delta = guidance_delta(pred_cond, pred_cond_perturbed)
            if self.pag_reuse > 1:
                self._delta = delta
        elif self.pag_mode == "cond" and self.pag_reuse > 1 and _positive(w_t):
            delta = self._delta  # a step between two perturbed passes
        if self._step is not None and self._num_inference_steps is not None \
                and self._step >= self._num_inference_steps - 1:
            # the call's last step: hold no tensor after it, and let the next call's text steps see the exact mode's
            # passes (as before its first step)
            self._delta, self._perturb_now = None, None
        # pag_mode="uncond": no delta; pred_uncond was the perturbed pass, and this is CFG's own formula on it
        pred = combine(pred_cond, delta, w_t, pred_uncond, self.guidance_scale if pred_uncond is not None else 1.0)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


def _head_sets(heads: Any) -> HeadSet | list[HeadSet]:
    """One head set, or a list of them (one per image)."""
    if per_row_heads(heads):
        return [HeadSet.coerce(h) for h in heads]
    return HeadSet.parse(heads) if isinstance(heads, str) else HeadSet.coerce(heads)


def _positive(scale: float | torch.Tensor) -> bool:
    """Whether the perturbed pass runs: a device-side (adaptive) ``w_t`` is not read back, so it counts as positive."""
    return isinstance(scale, torch.Tensor) or scale > 0
