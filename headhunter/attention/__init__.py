"""SoftPAG: perturbing individual attention heads.

- :mod:`~headhunter.attention.targets` — the math: target values ``T·V`` and the soft mix, never an N×N map.
- :mod:`~headhunter.attention.plan` — which rows perturb which heads, built once per call on the device.
- :mod:`~headhunter.attention.processors` — the SD3 joint and FLUX attention processors that apply it.
- :mod:`~headhunter.attention.install` — installing them (and the prefix-sharing fork) on a transformer for a call.
- :mod:`~headhunter.attention.dispatch` — the one mechanism for every model whose attention goes through
  ``dispatch_attention_fn`` (FLUX.1, Chroma, FLUX.2, Qwen-Image, Z-Image, Wan).
- :mod:`~headhunter.attention.perturb` — :func:`perturb`, every row of a forward perturbed, on any supported model.

The unperturbed attention still goes through diffusers' ``dispatch_attention_fn``, so the attention backend a user
chose (native, flash, sage, xformers) keeps serving every head; only the perturbed rows get the extra term.
"""

from .dispatch import DispatchPerturbation, hook_dispatch
from .install import PerturbationSession, compile_mode, perturbed_heads
from .perturb import perturb
from .plan import PerturbationPlan, build_plan
from .processors import SoftPAGFluxProcessor, SoftPAGJointProcessor
from .targets import SCOPES, TARGETS, check_target_scope, image_scope_identity_values, soft_mix, target_values

__all__ = [
    "DispatchPerturbation",
    "SCOPES",
    "TARGETS",
    "PerturbationPlan",
    "PerturbationSession",
    "SoftPAGFluxProcessor",
    "SoftPAGJointProcessor",
    "build_plan",
    "check_target_scope",
    "compile_mode",
    "hook_dispatch",
    "image_scope_identity_values",
    "perturb",
    "perturbed_heads",
    "soft_mix",
    "target_values",
]
