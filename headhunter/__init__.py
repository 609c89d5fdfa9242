"""headhunter: head-level perturbation guidance (SoftPAG) and head search (HeadHunter) for diffusers' SD3, SD3.5 and
FLUX.1 pipelines, and through :func:`perturb` and ``headhunter.guiders.HeadHunterGuidance`` for Chroma, FLUX.2,
Qwen-Image, Z-Image and Wan. The pipelines live in ``headhunter.pipelines``; the core here knows nothing of them.

The names below are imported on first use, so ``import headhunter`` (and ``headhunter --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Head": "heads",
    "HeadLayout": "heads",
    "HeadSet": "heads",
    "list_presets": "heads",
    "load_preset": "heads",
    "save_preset": "heads",
    "PerturbationPlan": "attention",
    "build_plan": "attention",
    "perturbed_heads": "attention",
    "perturb": "attention",
    "installed": "attention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headhunter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
