"""The stand-in attention processors that put SoftPAG on a layer (the math is in :mod:`.dispatch` and
:mod:`.targets`).

- :class:`SoftPAGProcessor` — a pipeline call's layer (:mod:`.install`): the perturbed rows the plan appends, each
  with its own heads and u; steps and layers without perturbed rows are the stock processor's call.
- :class:`DispatchPerturbation` — every row of a forward (:func:`headhunter.perturb`).
- :class:`JointAttnDispatchProcessor` — SD3 / SD3.5 joint attention through ``dispatch_attention_fn``: diffusers'
  ``JointAttnProcessor2_0`` calls SDPA itself, so on a perturbed SD3 layer this computes the attention instead.

A stand-in calls the layer's processor (the stock one, or SD3's dispatching one) inside :func:`.dispatch.perturbing`;
the attention that processor dispatches gets the target mixed in. Everything a stand-in reads per call is a tensor or
a value that stays the same between calls of one shape, so a compiled transformer is not recompiled when the heads
change.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn as _stock_dispatch

from .dispatch import Mix, hook_dispatch, perturbing, perturbing_dispatch, token_slices

if TYPE_CHECKING:
    from .install import PerturbationSession

__all__ = ["DispatchPerturbation", "JointAttnDispatchProcessor", "SoftPAGProcessor", "make_perturbable",
           "mirror_signature"]


# SD3's joint attention, through diffusers' dispatch with headhunter's mix (see .dispatch)
_dispatch = perturbing_dispatch(_stock_dispatch)


def mirror_signature(stand_in: Any, original: Any) -> None:
    """Make ``stand_in.__call__`` read as ``original.__call__`` to :func:`inspect.signature`: diffusers' attention
    modules choose the keyword arguments they pass a processor from that signature. (Calls still go to the
    stand-in's class ``__call__``.)"""

    def signature_only(*args: Any, **kwargs: Any) -> Any:
        return type(stand_in).__call__(stand_in, *args, **kwargs)

    signature_only.__signature__ = inspect.signature(original.__call__)  # type: ignore[attr-defined]
    stand_in.__dict__["__call__"] = signature_only


def make_perturbable(original: Any, kind: str) -> None:
    """Get a layer whose stock processor is ``original`` ready for a stand-in: hook the ``dispatch_attention_fn`` of
    the processor's module. (SD3's joint layers need nothing: their stand-ins compute the attention with
    :class:`JointAttnDispatchProcessor`, whose dispatch is hooked already.)"""
    if kind != "joint":
        hook_dispatch(type(original).__module__)


def _states(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden_states, encoder_hidden_states) of a processor call, positional or by name."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return hidden, context


def _project(attn: Any, x: torch.Tensor, fused: str, names: tuple[str, str, str]) -> tuple[torch.Tensor, ...]:
    """q, k, v projections of ``x``: the fused linear ``fused`` after ``attn.fuse_projections()``, else ``names``."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, fused):
        return tuple(getattr(attn, fused)(x).chunk(3, dim=-1))
    return tuple(getattr(attn, name)(x) for name in names)


class JointAttnDispatchProcessor:
    """SD3 / SD3.5 joint attention (``JointAttnProcessor2_0`` semantics: [image; text] tokens, optional QK RMS-norm,
    fused QKV, ``context_pre_only`` in the last block) with the attention through ``dispatch_attention_fn``, on the
    backend and parallel config of the stock processor it replaces."""

    def __init__(self, original: Any = None):
        self.attach(original)

    def attach(self, original: Any) -> None:
        # set_attention_backend writes the user's backend on the processors; keep serving it
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("attention masks are not supported on perturbed SD3 layers")
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads
        query, key, value = _project(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"))
        head_dim = key.shape[-1] // heads
        query, key, value = (x.view(batch, -1, heads, head_dim) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if encoder_hidden_states is not None:
            c_query, c_key, c_value = _project(
                attn, encoder_hidden_states, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")
            )
            c_query, c_key, c_value = (x.view(batch, -1, heads, head_dim) for x in (c_query, c_key, c_value))
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query = torch.cat([query, c_query], dim=1)
            key = torch.cat([key, c_key], dim=1)
            value = torch.cat([value, c_value], dim=1)

        out = _dispatch(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        hidden_states = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :n_image], hidden_states[:, n_image:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class SoftPAGProcessor:
    """A pipeline call's stand-in on one layer, made once per transformer and reused by every call (torch.compile
    guards on the processors' identity and types).

    The session's plan appends perturbed rows after its base rows; this layer mixes the target into those rows with
    ``u`` ([perturbed rows, heads], set per call by the session). Called with only the base rows (before the fork, on a
    step where the branch does not run, SD3's skip-layer guidance pass) it is the stock processor's call.

    Args:
        session: the transformer's :class:`~headhunter.attention.install.PerturbationSession`.
        kind: the layer's block kind (:meth:`~headhunter.heads.HeadLayout.block_kind`).
    """

    def __init__(self, session: "PerturbationSession", kind: str):
        self.session = session
        self.kind = kind
        self.u: torch.Tensor | None = None
        self.original: Any = None
        self.compute: Any = None  # what computes the perturbed call: the stock processor, or SD3's dispatching one
        self._joint = JointAttnDispatchProcessor() if kind == "joint" else None
        self._attention_backend = self._parallel_config = None

    def attach(self, original: Any) -> None:
        """Stand in for ``original`` (the stock processor), or for nobody (None)."""
        self.original = original
        # set_attention_backend writes the user's backend on the processors; read as the stock processor's
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)
        if original is None:
            self.compute = None
            return
        if self._joint is not None:
            self._joint.attach(original)
        self.compute = self._joint or original

    def _perturbs(self, rows: int) -> bool:
        session = self.session
        if not session.active or rows <= session.base_rows:
            return False
        if rows != session.base_rows + session.perturbed_rows:
            raise RuntimeError(
                f"the batch has {rows} rows but the perturbation plan has {session.base_rows} "
                f"base rows and {session.perturbed_rows} perturbed ones; call the transformer with the batch the plan "
                "was built for"
            )
        return True

    def __call__(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        hidden, context = _states(args, kwargs)
        if not self._perturbs(hidden.shape[0]):
            return self.original(attn, *args, **kwargs)
        session = self.session
        image, text = token_slices(self.kind, session.scope, session.text_len, hidden, context)
        mix = Mix(self.u, session.base_rows, session.target, session.scope, image, text)
        return perturbing(mix, self.compute, attn, *args, **kwargs)


class DispatchPerturbation:
    """Stands in for a layer's stock processor and perturbs its heads on every row (:func:`headhunter.perturb`).

    Args:
        original: the stock processor.
        u: [heads] softness per head (0 for heads left alone).
        target, scope: see :mod:`headhunter.attention.targets`.
        kind: the layer's block kind (:meth:`~headhunter.heads.HeadLayout.block_kind`): where the image tokens are.
        text_len: text tokens at the start of a single-stream layer's sequence (its image scope needs them).
    """

    def __init__(self, original: Any, u: torch.Tensor, target: str, scope: str, kind: str, text_len: int | None = None):
        self.original = original
        self.compute = JointAttnDispatchProcessor(original) if kind == "joint" else original
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

    def __call__(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._accepts is not None:
            kwargs = {name: value for name, value in kwargs.items() if name in self._accepts}
        hidden, context = _states(args, kwargs)
        image, text = token_slices(self.kind, self.scope, self.text_len, hidden, context)
        return perturbing(Mix(self.u, 0, self.target, self.scope, image, text), self.compute, attn, *args, **kwargs)
