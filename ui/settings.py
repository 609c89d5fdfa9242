"""The left panel's settings as one value: checked, turned into pipeline arguments, and read back from a PNG."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields, replace
from typing import Any

from headhunter.guidance import PAG_MODES

__all__ = ["FIELDS", "Settings"]


@dataclass(frozen=True)
class Settings:
    """What the studio's left panel holds. ``cfg`` is SD3's ``guidance_scale`` or FLUX's ``true_cfg_scale``;
    ``flux_guidance`` is FLUX's distilled ``guidance_scale`` (unused on SD3)."""

    prompt: str = "a lighthouse at dusk"
    negative: str = ""
    seed: int = 0
    steps: int = 28
    width: int = 1024
    height: int = 1024
    cfg: float = 1.0
    flux_guidance: float = 3.5
    pag_scale: float = 3.0
    adaptive: float = 0.0
    softness: float = 1.0
    target: str = "identity"
    scope: str = "joint"
    start: float = 0.0
    end: float = 1.0
    heads: str = ""
    reuse: int = 1
    mode: str = "cond"

    def checked(self) -> "Settings":
        """These settings with numbers as numbers; ValueError naming the first field that is wrong."""
        values = {}
        for name in ("seed", "steps", "width", "height", "reuse"):
            try:
                values[name] = int(getattr(self, name))
            except (TypeError, ValueError):
                if getattr(self, name) is None:  # what a number field holds when what was typed is no number
                    raise ValueError(f"{name.capitalize()}: type a whole number") from None
                raise ValueError(f"{name.capitalize()}: a whole number, got {getattr(self, name)!r}") from None
        for name in ("cfg", "flux_guidance", "pag_scale", "adaptive", "softness", "start", "end"):
            try:
                values[name] = float(getattr(self, name))
            except (TypeError, ValueError):
                if getattr(self, name) is None:
                    raise ValueError(f"{_label(name)}: type a number") from None
                raise ValueError(f"{_label(name)}: a number, got {getattr(self, name)!r}") from None
            if not math.isfinite(values[name]):
                raise ValueError(f"{_label(name)}: a finite number, got {getattr(self, name)!r}")
        if values["steps"] < 1:
            raise ValueError(f"Steps: 1 or more, got {values['steps']}")
        for name in ("width", "height"):
            if values[name] < 16:
                raise ValueError(f"{name.capitalize()}: 16 px or more, got {values[name]} px")
        if values["seed"] < 0:
            raise ValueError(f"Seed: 0 or more, got {values['seed']}")
        for name in ("cfg", "flux_guidance", "pag_scale", "adaptive"):
            if values[name] < 0:
                raise ValueError(f"{_label(name)}: 0 or more, got {values[name]:g}")
        if values["reuse"] < 1:
            raise ValueError(f"Reuse: 1 or more (1 is exact), got {values['reuse']}")
        if self.mode not in PAG_MODES:
            raise ValueError(f"Mode: one of {', '.join(PAG_MODES)}, got {self.mode!r}")
        if self.mode == "uncond" and (values["reuse"] != 1 or values["cfg"] <= 1):
            raise ValueError("Mode uncond perturbs CFG's unconditional pass: it needs CFG above 1 and Reuse 1")
        if not 0.0 <= values["softness"] <= 1.0:
            raise ValueError(f"Softness: {values['softness']:g} is outside [0, 1]")
        return replace(self, prompt=self.prompt or "", negative=self.negative or "", heads=self.heads or "", **values)

    def call_kwargs(self, model_type: str, extra: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's keyword arguments (everything but prompt, seed and heads), as the CLI writes them;
        ``extra`` are the model's own (a built-in model's short text encoders)."""
        kwargs: dict[str, Any] = dict(num_inference_steps=self.steps, height=self.height, width=self.width,
                                      pag_scale=self.pag_scale, pag_softness=self.softness, pag_target=self.target,
                                      pag_scope=self.scope, pag_interval=(self.start, self.end),
                                      negative_prompt=self.negative or None)
        if self.adaptive:
            kwargs["pag_adaptive_scale"] = self.adaptive
        if self.reuse != 1:
            kwargs["pag_reuse"] = self.reuse
        if self.mode != "cond":
            kwargs["pag_mode"] = self.mode
        if model_type == "flux":
            kwargs["true_cfg_scale"] = self.cfg
            kwargs["guidance_scale"] = self.flux_guidance
        else:
            kwargs["guidance_scale"] = self.cfg
        return {**kwargs, **extra}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], model_type: str) -> "Settings":
        """The settings a headhunter PNG carries (the studio's downloads, ``headhunter generate``)."""
        cfg = meta.get("true_cfg_scale") if model_type == "flux" else meta.get("guidance_scale")
        interval = meta.get("pag_interval") or (0.0, 1.0)
        found = dict(prompt=meta.get("prompt"), negative=meta.get("negative_prompt") or "", seed=meta.get("seed"),
                     steps=meta.get("num_inference_steps"), width=meta.get("width"),
                     height=meta.get("height", meta.get("width")), cfg=cfg,
                     flux_guidance=meta.get("guidance_scale") if model_type == "flux" else None,
                     pag_scale=meta.get("pag_scale"), adaptive=meta.get("pag_adaptive_scale", 0.0),
                     softness=meta.get("pag_softness"), target=meta.get("pag_target"), scope=meta.get("pag_scope"),
                     start=interval[0], end=interval[1], heads=meta.get("pag_heads") or "",
                     reuse=meta.get("pag_reuse", 1), mode=meta.get("pag_mode", "cond"))
        if found["prompt"] is None or found["seed"] is None:
            raise ValueError("this PNG's settings have no prompt or seed")
        return replace(cls(), **{k: v for k, v in found.items() if v is not None}).checked()

    def with_shared(self, shared: dict[str, Any], model_type: str) -> "Settings":
        """These settings with the fields another tool's PNG carries (prompt, negative prompt, seed, steps, size,
        CFG; :data:`~headhunter.parameters.SHARED_FIELDS`) taken from it; the head-guidance fields stay."""
        names = dict(prompt="prompt", negative_prompt="negative", seed="seed", num_inference_steps="steps",
                     width="width", height="height", cfg_scale="cfg")
        if model_type == "flux":
            names["distilled_cfg_scale"] = "flux_guidance"
        return replace(self, **{field: shared[key] for key, field in names.items() if key in shared}).checked()

    def values(self) -> tuple:
        return astuple(self)


FIELDS = tuple(f.name for f in fields(Settings))


def _label(name: str) -> str:
    return {"cfg": "CFG", "flux_guidance": "FLUX guidance", "pag_scale": "PAG scale", "adaptive": "Adaptive scale",
            "start": "Interval start", "end": "Interval end"}.get(name, name.capitalize())
