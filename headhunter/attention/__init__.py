"""SoftPAG: perturbing individual attention heads.

- :mod:`~headhunter.attention.targets` — the math: target values ``T·V`` and the soft mix, never an N×N map.
- :mod:`~headhunter.attention.plan` — which rows perturb which heads, built once per call on the device.
- :mod:`~headhunter.attention.dispatch` — the one mechanism: the target mixed into the attention a layer computes
  through diffusers' ``dispatch_attention_fn`` (SD3, FLUX.1, Chroma, FLUX.2, Qwen-Image, Z-Image, Wan).
- :mod:`~headhunter.attention.processors` — the stand-in processors that switch it on for a layer's call.
- :mod:`~headhunter.attention.install` — installing them (and the prefix-sharing fork) on a transformer for a call.
- :mod:`~headhunter.attention.perturb` — :func:`perturb`, every row of a forward perturbed, on any supported model.

The unperturbed attention still goes through diffusers' ``dispatch_attention_fn``, so the attention backend a user
chose (native, flash, sage, xformers) keeps serving every head; only the perturbed rows get the extra term.
"""

from .dispatch import hook_dispatch
from .install import PerturbationSession, compile_mode, perturbed_heads
from .perturb import perturb
from .plan import PerturbationPlan, build_plan
from .processors import DispatchPerturbation, JointAttnDispatchProcessor, SoftPAGProcessor
from .targets import SCOPES, TARGETS, check_target_scope, image_scope_identity_values, soft_mix, target_values

__all__ = [
    "DispatchPerturbation",
    "SCOPES",
    "TARGETS",
    "PerturbationPlan",
    "PerturbationSession",
    "JointAttnDispatchProcessor",
    "SoftPAGProcessor",
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
