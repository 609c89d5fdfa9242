"""One mechanism for every transformer whose attention goes through diffusers' ``dispatch_attention_fn``.

diffusers' attention processors (FLUX.1, Chroma, FLUX.2, Qwen-Image, Z-Image, Wan, ...) compute q, k and v their own
way — QK-norm, RoPE, [text; image] concatenation, single- or double-stream — and then call the module-level name
``dispatch_attention_fn`` of their module with [B, S, H, D] tensors. headhunter wraps that name once per module: the
wrapper calls diffusers' function with the same arguments (so the user's backend — native, flash, sage, xformers —
serves every head) and, only while a :class:`DispatchPerturbation` processor of this thread is inside its call, mixes
the SoftPAG target into the heads it perturbs. Outside such a call the wrapper is diffusers' function plus one
context-variable read; a new model needs its layout in :data:`headhunter.heads.MODELS`, not new attention code.
"""

from __future__ import annotations

import inspect
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .targets import image_scope_identity_values, soft_mix, target_values

__all__ = ["DispatchPerturbation", "hook_dispatch", "mirror_signature"]


@dataclass(frozen=True)
class _Mix:
    u: torch.Tensor  # [heads] softness of this layer's heads (0 for the heads left alone)
    target: str
    scope: str
    image: slice | None  # image tokens of the sequence, for the image scope
    text: slice | None


# Per thread (and per asyncio task): the perturbation of the attention call in progress, if any.
_ACTIVE: ContextVar[_Mix | None] = ContextVar("headhunter_perturbation", default=None)
_HOOK_LOCK = threading.Lock()


def hook_dispatch(module_name: str) -> None:
    """Route ``dispatch_attention_fn`` of module ``module_name`` through headhunter (once; idempotent)."""
    module = sys.modules[module_name]
    with _HOOK_LOCK:
        current = getattr(module, "dispatch_attention_fn", None)
        if current is None:
            raise ValueError(f"{module_name} does not call diffusers' dispatch_attention_fn; its heads cannot be perturbed")
        if not hasattr(current, "headhunter_original"):
            module.dispatch_attention_fn = _perturbing(current)


def _perturbing(dispatch: Callable) -> Callable:
    def dispatch_attention_fn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attn_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = dispatch(query, key, value, attn_mask, *args, **kwargs)
        mix = _ACTIVE.get()
        if mix is None:
            return out
        return mix_target(query, key, value, attn_mask, out, mix)

    dispatch_attention_fn.headhunter_original = dispatch  # type: ignore[attr-defined]
    return dispatch_attention_fn


def mirror_signature(stand_in: Any, original: Any) -> None:
    """Make ``stand_in.__call__`` read as ``original.__call__`` to :func:`inspect.signature`: diffusers' attention
    modules choose the keyword arguments they pass a processor from that signature. (Calls still go to the
    stand-in's class ``__call__``.)"""

    def signature_only(*args: Any, **kwargs: Any) -> Any:
        return type(stand_in).__call__(stand_in, *args, **kwargs)

    signature_only.__signature__ = inspect.signature(original.__call__)  # type: ignore[attr-defined]
    stand_in.__dict__["__call__"] = signature_only


def _key_valid(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """A key-padding mask as [B, K] booleans (True: attended); ValueError for masks of another shape."""
    if mask is None:
        return None
    valid = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if valid.ndim == 4 and valid.shape[1] == 1 and valid.shape[2] == 1:
        valid = valid[:, 0, 0]
    if valid.ndim != 2 or valid.shape[-1] != keys:
        raise ValueError(f"an attention mask of shape {tuple(mask.shape)} is not a key-padding mask; SoftPAG targets "
                         "other than identity need one ([B, K] or [B, 1, 1, K])")
    return valid.expand(batch, keys)


def mix_target(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor,
               mix: _Mix) -> torch.Tensor:
    """``out`` ([B, S, H, D], the attention as computed) with each head moved toward its target by its u."""
    u = mix.u.to(out.device)[None].expand(out.shape[0], -1)
    if out.requires_grad:  # backends may keep their output for backward: do not write into it
        out = out.clone()
    if mix.scope == "image":
        valid = _key_valid(mask, q.shape[0], k.shape[1])
        target = image_scope_identity_values(q, k, v, mix.image, mix.text, None if valid is None else valid[:, mix.text])
        out[:, mix.image] = soft_mix(out[:, mix.image], target, u)
        return out
    valid = None if mix.target == "identity" else _key_valid(mask, q.shape[0], k.shape[1])
    return soft_mix(out, target_values(q, k, v, mix.target, valid), u)


class DispatchPerturbation:
    """Stands in for a layer's stock processor and perturbs its heads: the stock processor runs unchanged, and its
    call of ``dispatch_attention_fn`` gets the target mixed in (see the module docstring).

    Args:
        original: the stock processor.
        u: [heads] softness per head (0 for heads left alone).
        target, scope: see :mod:`headhunter.attention.targets`.
        kind: the layer's block kind (:meth:`~headhunter.heads.HeadLayout.block_kind`): where the image tokens are.
        text_len: text tokens at the start of a single-stream layer's sequence (its image scope needs them).
    """

    def __init__(self, original: Any, u: torch.Tensor, target: str, scope: str, kind: str, text_len: int | None = None):
        self.original = original
        self.u = u
        self.target = target
        self.scope = scope
        self.kind = kind
        self.text_len = text_len
        parameters = inspect.signature(original.__call__).parameters.values()
        # diffusers passes a processor only the keyword arguments its signature names; so do we
        self._accepts = None if any(p.kind is p.VAR_KEYWORD for p in parameters) else {p.name for p in parameters}
        mirror_signature(self, original)

    def __getattr__(self, name: str) -> Any:  # _attention_backend, _parallel_config, ... of the stock processor
        if name == "original":
            raise AttributeError(name)
        return getattr(self.original, name)

    def _slices(self, args: tuple, kwargs: dict) -> tuple[slice | None, slice | None]:
        if self.scope != "image":
            return None, None
        if self.kind == "self":  # self-attention over the image (video) tokens alone
            return slice(0, None), slice(0, 0)
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        n_text = context.shape[1] if context is not None and self.kind == "double" else self.text_len
        if n_text is None:
            raise ValueError("pag_scope='image' on a single-stream layer needs text_len")
        return slice(n_text, None), slice(0, n_text)  # these models put the text first

    def __call__(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._accepts is not None:
            kwargs = {name: value for name, value in kwargs.items() if name in self._accepts}
        image, text = self._slices(args, kwargs)
        token = _ACTIVE.set(_Mix(self.u, self.target, self.scope, image, text))
        try:
            return self.original(attn, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)
