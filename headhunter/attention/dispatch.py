"""One mechanism for every transformer whose attention goes through diffusers' ``dispatch_attention_fn``.

diffusers' attention processors (FLUX.1, Chroma, FLUX.2, Qwen-Image, Z-Image, Wan, ...) compute q, k and v their own
way — QK-norm, RoPE, [text; image] concatenation, single- or double-stream — and then call the module-level name
``dispatch_attention_fn`` of their module with [B, S, H, D] tensors. While a headhunter call runs on a layer of such a
module, that name is headhunter's wrapper: it calls diffusers' function with the same arguments (so the user's
backend — native, flash, sage, xformers — serves every head) and, only while one of headhunter's stand-in processors
of *this thread* is inside its call (:func:`perturbing`), mixes the SoftPAG target into the rows and heads that call
perturbs. A new model needs its layout in :data:`headhunter.heads.MODELS`, not new attention code. (SD3's stock
processor calls SDPA itself; on a perturbed SD3 layer
:class:`~headhunter.attention.processors.JointAttnDispatchProcessor` computes the perturbed rows' attention through
the same wrapper.)

Why a module global, and why it is safe: a processor's ``__call__`` looks the name up in its module at every call, and
it is the only place every model's attention passes through with q, k and v in hand. The alternatives weighed:
diffusers' backend registry keys backends by an enum (no room for a wrapper that keeps the user's backend), and its
``HookRegistry`` sees a module's inputs and outputs, not its attention's q, k, v. So the name is patched — but only
while some call needs it (:func:`dispatch_patched` counts the calls and puts diffusers' function back when the last
one ends, raises or is interrupted), and the wrapper is inert for every thread that is not inside a stand-in call (one
attribute read). Each module keeps one wrapper object for the life of the process, so a compiled transformer sees the
same function in every call and is not recompiled for it.

The mix of the call in progress lives in a ``threading.local``: per thread like a context variable, and, unlike one,
traceable by torch.compile, so a compiled transformer keeps one graph (fullgraph) with the wrapper inside it.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch

from .targets import image_scope_identity_values, soft_mix, target_values

__all__ = ["Mix", "dispatch_patched", "mix_target", "patched_modules", "perturbing", "perturbing_dispatch",
           "token_slices"]


class Mix:
    """What one attention call perturbs.

    Attributes:
        u: softness per head: [heads] for every row from ``first_row`` on, or [rows − first_row, heads].
        first_row: rows before it are left alone (a pipeline's base rows).
        target, scope: see :mod:`headhunter.attention.targets`.
        image, text: token slices of the sequence, for the image scope (None otherwise).
    """

    __slots__ = ("u", "first_row", "target", "scope", "image", "text")

    def __init__(self, u: torch.Tensor, first_row: int, target: str, scope: str, image: slice | None = None,
                 text: slice | None = None):
        self.u, self.first_row, self.target, self.scope = u, first_row, target, scope
        self.image, self.text = image, text


_LOCAL = threading.local()  # .mix: the Mix of the stand-in processor call in progress on this thread, if any
_PATCH_LOCK = threading.Lock()
_WRAPPERS: dict[str, Callable] = {}  # module name -> its wrapper (kept: compiled graphs guard on its identity)
_USERS: dict[str, int] = {}  # module name -> calls in progress that need the wrapper there


def perturbing_dispatch(dispatch: Callable) -> Callable:
    """``dispatch`` (diffusers' ``dispatch_attention_fn``) with the mix of this thread's stand-in call applied."""
    def dispatch_attention_fn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attn_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = dispatch(query, key, value, attn_mask, *args, **kwargs)
        mix = getattr(_LOCAL, "mix", None)
        if mix is None:
            return out
        # the layer's own attention is its first call; later ones (an IP-Adapter's image attention) are left alone
        _LOCAL.mix = None
        return mix_target(query, key, value, attn_mask, out, mix)

    dispatch_attention_fn.headhunter_original = dispatch  # type: ignore[attr-defined]
    return dispatch_attention_fn


def _acquire(name: str) -> None:
    module = sys.modules[name]
    current = getattr(module, "dispatch_attention_fn", None)
    if current is None:
        raise ValueError(f"{name} does not call diffusers' dispatch_attention_fn; its heads cannot be perturbed")
    wrapper = _WRAPPERS.get(name)
    if current is not wrapper:
        if wrapper is None or wrapper.headhunter_original is not current:  # first use, or the name was re-bound
            wrapper = _WRAPPERS[name] = perturbing_dispatch(current)
        module.dispatch_attention_fn = wrapper
    _USERS[name] = _USERS.get(name, 0) + 1


def _release(name: str) -> None:
    _USERS[name] -= 1
    if _USERS[name]:
        return
    del _USERS[name]
    module, wrapper = sys.modules[name], _WRAPPERS[name]
    if module.dispatch_attention_fn is wrapper:  # (if someone re-bound it meanwhile, theirs stays)
        module.dispatch_attention_fn = wrapper.headhunter_original


@contextmanager
def dispatch_patched(module_names: Iterable[str]) -> Iterator[None]:
    """Route ``dispatch_attention_fn`` of each named module through headhunter for the body; diffusers' function is
    back when the last body that asked for a module ends, raises or is interrupted."""
    acquired: list[str] = []
    try:
        for name in sorted(set(module_names)):
            with _PATCH_LOCK:
                _acquire(name)
                acquired.append(name)
        yield
    finally:
        with _PATCH_LOCK:
            for name in acquired:
                _release(name)


def patched_modules() -> list[str]:
    """Modules whose ``dispatch_attention_fn`` is headhunter's wrapper right now (empty outside every call)."""
    with _PATCH_LOCK:
        return sorted(name for name, wrapper in _WRAPPERS.items()
                      if getattr(sys.modules.get(name), "dispatch_attention_fn", None) is wrapper)


def perturbing(mix: Mix, where: str, processor: Callable, *args: Any, **kwargs: Any) -> Any:
    """``processor(*args, **kwargs)`` with ``mix`` applied to the attention it dispatches.

    Raises RuntimeError naming ``where`` (the layer and its processor) when the processor returned without
    dispatching any attention through headhunter's wrapper: its branch would equal the unperturbed one and guidance
    would silently be off."""
    previous = getattr(_LOCAL, "mix", None)
    _LOCAL.mix = mix
    try:
        out = processor(*args, **kwargs)
        if _LOCAL.mix is mix:
            raise RuntimeError(
                f"{where} was to be perturbed but never called diffusers' dispatch_attention_fn, so nothing was "
                "mixed (its perturbed branch would equal the unperturbed one); headhunter perturbs processors that "
                "compute their attention through dispatch_attention_fn, such as diffusers' stock ones"
            )
        return out
    finally:
        _LOCAL.mix = previous


def token_slices(kind: str, scope: str, text_len: int | None, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None) -> tuple[slice | None, slice | None]:
    """(image, text) token slices of a layer's attention sequence for the image scope; (None, None) for the joint
    scope. ``kind`` is :meth:`~headhunter.heads.HeadLayout.block_kind`: SD3's joint layers put the image first,
    double- and single-stream layers the text (a single-stream layer's ``text_len`` tokens), self-attention layers
    have image (video) tokens only."""
    if scope != "image":
        return None, None
    if kind == "joint":
        n_image = hidden_states.shape[1]
        return slice(0, n_image), slice(n_image, None)
    if kind == "self":
        return slice(0, None), slice(0, 0)
    n_text = encoder_hidden_states.shape[1] if kind == "double" and encoder_hidden_states is not None else text_len
    if n_text is None:
        raise ValueError("pag_scope='image' on a single-stream layer needs text_len (the text tokens before the image)")
    return slice(n_text, None), slice(0, n_text)


def _key_valid(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """A key-padding mask as [B, K] booleans (True: attended); ValueError for masks of another shape. A float mask
    is additive (a key is out where it holds -inf or the dtype's minimum); a [B, 1, Q, K] mask (Chroma's padding mask
    times its transpose) counts a key as real when some query attends to it."""
    if mask is None:
        return None
    valid = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if valid.ndim == 4 and valid.shape[1] == 1:
        valid = valid[:, 0].any(dim=1)
    if valid.ndim != 2 or valid.shape[-1] != keys:
        raise ValueError(f"an attention mask of shape {tuple(mask.shape)} is not a key-padding mask; SoftPAG targets "
                         "other than identity need one ([B, K], [B, 1, 1, K] or [B, 1, Q, K])")
    return valid.expand(batch, keys)


def mix_target(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor,
               mix: Mix) -> torch.Tensor:
    """``out`` ([B, S, H, D], the attention as computed) with the heads of rows ``mix.first_row:`` moved toward their
    target by their u. A head whose u is 0 keeps its output bit for bit."""
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"SoftPAG perturbs self-attention; this attention call has {q.shape[1]} queries and "
                         f"{k.shape[1]} keys")
    first = mix.first_row
    rows = out.shape[0] - first
    u = mix.u.to(out.device)
    if u.ndim == 1:
        u = u[None].expand(rows, -1)
    if out.requires_grad:  # backends may keep their output for backward: do not write into it
        out = out.clone()
    q, k, v = q[first:], k[first:], v[first:]
    if mix.scope == "image":
        valid = _key_valid(mask, out.shape[0], k.shape[1])
        text_valid = None if valid is None else valid[first:, mix.text]
        target = image_scope_identity_values(q, k, v, mix.image, mix.text, text_valid)
        out[first:, mix.image] = soft_mix(out[first:, mix.image], target, u)
        return out
    valid = None if mix.target == "identity" or mask is None else _key_valid(mask, out.shape[0], k.shape[1])[first:]
    out[first:] = soft_mix(out[first:], target_values(q, k, v, mix.target, valid), u)
    return out
