"""headhunter: head-level perturbation guidance (SoftPAG) and head search (HeadHunter) for diffusers' SD3, SD3.5 and
FLUX.1 pipelines. The pipelines live in ``headhunter.pipelines``; the core here knows nothing of them."""

from .attention import PerturbationPlan, build_plan, perturbed_heads
from .heads import Head, HeadLayout, HeadSet, list_presets, load_preset, save_preset

__version__ = "0.1.0"

__all__ = [
    "Head",
    "HeadLayout",
    "HeadSet",
    "PerturbationPlan",
    "build_plan",
    "list_presets",
    "load_preset",
    "perturbed_heads",
    "save_preset",
]
