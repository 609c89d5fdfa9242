"""SoftPAG: perturbing individual attention heads.

- :mod:`~headhunter.attention.targets` — the math: target values ``T·V`` and the soft mix, never an N×N map.
- :mod:`~headhunter.attention.plan` — which rows perturb which heads, built once per call on the device.
- :mod:`~headhunter.attention.dispatch` — the one mechanism: the target mixed into the attention a layer computes
  through diffusers' ``dispatch_attention_fn`` (SD3, FLUX.1, Chroma, FLUX.2, Qwen-Image, Z-Image, Wan).
- :mod:`~headhunter.attention.processors` — the one stand-in processor that switches it on for a layer's call.
- :mod:`~headhunter.attention.install` — installing it (and the prefix-sharing fork) on a transformer for a call, and
  :func:`installed`, which says what of headhunter is on a transformer now (nothing, outside a call).
- :mod:`~headhunter.attention.perturb` — :func:`perturb`, every row of a forward perturbed, on any supported model.

The unperturbed attention still goes through diffusers' ``dispatch_attention_fn``, so the attention backend a user
chose (native, flash, sage, xformers) keeps serving every head; only the perturbed rows get the extra term.
"""

from .install import FORKING_MODELS, PerturbationSession, around_next_call, compile_mode, installed, perturbed_heads
from .perturb import perturb
from .plan import PerturbationPlan, build_plan
from .processors import JointAttnDispatchProcessor, SoftPAGProcessor
from .targets import SCOPES, TARGETS, check_target_scope, image_scope_identity_values, soft_mix, target_values

__all__ = [
    "FORKING_MODELS",
    "SCOPES",
    "TARGETS",
    "PerturbationPlan",
    "PerturbationSession",
    "JointAttnDispatchProcessor",
    "SoftPAGProcessor",
    "around_next_call",
    "build_plan",
    "check_target_scope",
    "compile_mode",
    "image_scope_identity_values",
    "installed",
    "perturb",
    "perturbed_heads",
    "soft_mix",
    "target_values",
]
