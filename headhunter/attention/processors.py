"""The stand-in attention processor that puts SoftPAG on a layer (the math is in :mod:`.dispatch` and
:mod:`.targets`), and SD3's joint attention through diffusers' dispatch.

- :class:`SoftPAGProcessor` — the one stand-in, made once per layer of a transformer and installed for a call by
  :mod:`.install`: a pipeline's perturbed rows appended after its base rows (each row with its own heads and u), or
  every row of a forward (:func:`headhunter.perturb`). Anything else — another thread's forward, a step or a block
  without perturbed rows — is the layer's own processor's call, unchanged.
- :class:`JointAttnDispatchProcessor` — SD3 / SD3.5 joint attention through ``dispatch_attention_fn``: diffusers'
  ``JointAttnProcessor2_0`` calls SDPA itself, so on a perturbed SD3 layer this computes the perturbed rows.

The stand-in calls the processor that computes the perturbed rows inside :func:`.dispatch.perturbing`; the attention
that processor dispatches gets the target mixed in, and a processor that dispatches nothing is an error. Everything a
stand-in reads per call is a tensor or a value that stays the same between calls of one shape, so a compiled
transformer is not recompiled when the heads change.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn as _stock_dispatch
from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

from .dispatch import Mix, perturbing, perturbing_dispatch, token_slices

if TYPE_CHECKING:
    from .install import PerturbationSession

__all__ = ["JointAttnDispatchProcessor", "SoftPAGProcessor"]


# SD3's joint attention, through diffusers' dispatch with headhunter's mix (see .dispatch); no module global patched
_dispatch = perturbing_dispatch(_stock_dispatch)


def _states(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden_states, encoder_hidden_states) of a processor call, positional or by name."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return hidden, context


_NOT_GIVEN: Any = object()

# The per-row arguments of a processor call, in their positional order (SD3's ``Attention``, FLUX-style processors)
_PER_ROW_ARGUMENTS = ("hidden_states", "encoder_hidden_states", "attention_mask")
# ... and those passed by name only: an SD3 IP-Adapter's image tokens and timestep embedding
_PER_ROW_KEYWORDS = (*_PER_ROW_ARGUMENTS, "ip_hidden_states", "temb")


def _rows(args: tuple, kwargs: dict, rows: slice) -> tuple[tuple, dict]:
    """The processor call's arguments for ``rows`` of the batch."""
    def take(name: str, value: Any) -> Any:
        if name not in _PER_ROW_KEYWORDS:
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(v[rows] if isinstance(v, torch.Tensor) else v for v in value)
        return value[rows] if isinstance(value, torch.Tensor) else value

    args = tuple(take(name, value) for name, value in zip(_PER_ROW_ARGUMENTS, args)) + args[len(_PER_ROW_ARGUMENTS):]
    return args, {name: take(name, value) for name, value in kwargs.items()}


@functools.lru_cache(maxsize=None)
def _accepted_keywords(processor_class: type) -> frozenset[str] | None:
    """The keyword arguments a processor class takes (None: any). diffusers passes a processor only those its
    signature names; so does the stand-in. Read once per class, not at every installation (a guider installs per
    pass)."""
    parameters = inspect.signature(processor_class.__call__).parameters.values()
    return None if any(p.kind is p.VAR_KEYWORD for p in parameters) else frozenset(p.name for p in parameters)


def _join(first: Any, second: Any) -> Any:
    """Two processor outputs (a tensor, or a tuple of them) joined along the batch."""
    if isinstance(first, tuple):
        return tuple(torch.cat([a, b]) for a, b in zip(first, second))
    return torch.cat([first, second])


def _project(attn: Any, x: torch.Tensor, fused: str, names: tuple[str, str, str]) -> tuple[torch.Tensor, ...]:
    """q, k, v projections of ``x``: the fused linear ``fused`` after ``attn.fuse_projections()``, else ``names``."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, fused):
        return tuple(getattr(attn, fused)(x).chunk(3, dim=-1))
    return tuple(getattr(attn, name)(x) for name in names)


class JointAttnDispatchProcessor:
    """SD3 / SD3.5 joint attention (``JointAttnProcessor2_0`` semantics: [image; text] tokens, optional QK RMS-norm,
    fused QKV, ``context_pre_only`` in the last block) with the attention through ``dispatch_attention_fn``, on the
    backend and parallel config of the stock processor it replaces. In place of diffusers'
    ``SD3IPAdapterJointAttnProcessor2_0`` it adds that processor's image-prompt attention (:func:`_sd3_ip_attention`,
    with its weights), which SoftPAG leaves alone."""

    def __init__(self, original: Any = None):
        self.attach(original)

    def attach(self, original: Any) -> None:
        # set_attention_backend writes the user's backend on the processors; keep serving it
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)
        self._ip = original if isinstance(original, SD3IPAdapterJointAttnProcessor2_0) else None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        ip_hidden_states: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("attention masks are not supported on perturbed SD3 layers")
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads
        query, key, value = _project(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"))
        head_dim = key.shape[-1] // heads
        query, key, value = (x.view(batch, -1, heads, head_dim) for x in (query, key, value))
        image_qkv = query, key, value  # before the QK norm: the IP-Adapter normalises them with its own
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
        if self._ip is not None and self._ip.scale != 0 and ip_hidden_states is not None:
            hidden_states = hidden_states + self._ip.scale * _sd3_ip_attention(
                self._ip, *image_qkv, ip_hidden_states, temb, self._attention_backend, self._parallel_config)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def _sd3_ip_attention(ip: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      ip_hidden_states: torch.Tensor, temb: torch.Tensor | None, backend: Any,
                      parallel_config: Any) -> torch.Tensor:
    """The image-prompt attention of diffusers' ``SD3IPAdapterJointAttnProcessor2_0`` (its "IP Adapter" block, the
    same operations on its weights ``ip``): image queries attend over [image keys; IP keys], each normalised by the
    adapter's own RMS-norms. ``query``, ``key``, ``value``: the image tokens' projections [B, N, H, D], before the
    layer's QK norm. Returns [B, N, H·D], to be added times ``ip.scale`` before the output projection.
    ``tests/test_adapters.py`` checks it against diffusers' processor."""
    batch, heads, head_dim = query.shape[0], query.shape[2], query.shape[3]
    tokens = ip.norm_ip(ip_hidden_states, temb=temb)
    ip_key = ip.to_k_ip(tokens).view(batch, -1, heads, head_dim)
    ip_value = ip.to_v_ip(tokens).view(batch, -1, heads, head_dim)
    keys = torch.cat([ip.norm_k(key), ip.norm_ip_k(ip_key)], dim=1)
    values = torch.cat([value, ip_value], dim=1)
    out = _stock_dispatch(ip.norm_q(query), keys, values, backend=backend, parallel_config=parallel_config)
    return out.flatten(2, 3).to(query.dtype)


class SoftPAGProcessor:
    """The stand-in on one layer of a transformer, made once and reused by every call (torch.compile guards on the
    processors' identity and types).

    While its session is active *in the calling thread*, it mixes the target into the rows the session perturbs: the
    rows after the session's ``base_rows`` (a pipeline's perturbed rows, ``u`` [perturbed rows, heads]), or every
    row (:func:`headhunter.perturb`, ``u`` [heads]). Otherwise — another thread, a step where the branch does not
    run, the base rows before the fork, SD3's skip-layer guidance pass — it is the layer's own processor's call.

    On SD3's joint layers the base rows go through the layer's own processor and only the perturbed rows through
    :class:`JointAttnDispatchProcessor`, so a user's processor (an attention store, an XLA or NPU processor) still
    serves every unperturbed row. Elsewhere the layer's own processor computes every row and the mix happens in the
    attention it dispatches.

    Args:
        session: the transformer's :class:`~headhunter.attention.install.PerturbationSession`.
        layer: the layer's number (``L{layer}``).
        kind: the layer's block kind (:meth:`~headhunter.heads.HeadLayout.block_kind`).
        name: the attention module's name in the transformer, for errors.
    """

    def __init__(self, session: "PerturbationSession", layer: int, kind: str, name: str):
        self.session = session
        self.layer, self.kind, self.name = layer, kind, name
        self.u: torch.Tensor | None = None
        self.original: Any = None
        self.compute: Any = None  # what computes the perturbed rows: the layer's processor, or SD3's dispatching one
        self.where = f"L{layer} ({name})"
        self._joint = JointAttnDispatchProcessor() if kind == "joint" else None
        self._accepts: frozenset[str] | None = None

    def attach(self, original: Any) -> None:
        """Stand in for ``original``, the layer's own processor (kept after the call: another thread that fetched
        this stand-in just before it was removed still reaches the layer's processor through it)."""
        self.original = original
        if self._joint is not None:
            self._joint.attach(original)
        self.compute = self._joint or original
        self.where = f"L{self.layer} ({self.name}, processor {type(original).__name__})"
        self._accepts = _accepted_keywords(type(original))

    def __getattr__(self, name: str) -> Any:  # _attention_backend, _parallel_config, ... of the layer's processor
        if name in ("original", "__dict__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.original, name)

    def __call__(
        self,
        attn: Any,
        *args: Any,
        # Keyword arguments that diffusers' attention modules pass a processor only when its signature names them
        # (they read it with inspect.signature; a signature copied from the layer's processor would do, but
        # torch.compile cannot trace one made outside the graph). Forwarded when given.
        image_rotary_emb: Any = _NOT_GIVEN,
        encoder_hidden_states_mask: Any = _NOT_GIVEN,
        freqs_cis: Any = _NOT_GIVEN,
        rotary_emb: Any = _NOT_GIVEN,
        ip_hidden_states: Any = _NOT_GIVEN,
        ip_adapter_masks: Any = _NOT_GIVEN,
        temb: Any = _NOT_GIVEN,
        kv_cache: Any = _NOT_GIVEN,
        kv_cache_mode: Any = _NOT_GIVEN,
        num_txt_tokens: Any = _NOT_GIVEN,
        num_ref_tokens: Any = _NOT_GIVEN,
        **kwargs: Any,
    ) -> Any:
        for name, value in (("image_rotary_emb", image_rotary_emb), ("encoder_hidden_states_mask",
                            encoder_hidden_states_mask), ("freqs_cis", freqs_cis), ("rotary_emb", rotary_emb),
                            ("ip_hidden_states", ip_hidden_states), ("ip_adapter_masks", ip_adapter_masks),
                            ("temb", temb),
                            ("kv_cache", kv_cache), ("kv_cache_mode", kv_cache_mode),
                            ("num_txt_tokens", num_txt_tokens), ("num_ref_tokens", num_ref_tokens)):
            if value is not _NOT_GIVEN:
                kwargs[name] = value
        if self._accepts is not None:
            kwargs = {name: value for name, value in kwargs.items() if name in self._accepts}
        session = self.session
        if self.u is None or not session.active:  # not perturbed here, or not now, or not in this thread
            return self.original(attn, *args, **kwargs)
        hidden, context = _states(args, kwargs)
        rows, base = hidden.shape[0], session.base_rows
        if rows <= base:
            return self.original(attn, *args, **kwargs)
        if session.perturbed_rows is not None and rows != base + session.perturbed_rows:
            raise RuntimeError(
                f"the batch has {rows} rows but the perturbation plan has {base} base rows and "
                f"{session.perturbed_rows} perturbed ones; call the transformer with the batch the plan was built for"
            )
        if self.u.device != hidden.device:  # offloaded models: follow the activations, once per call
            self.u = self.u.to(hidden.device)
        image, text = token_slices(self.kind, session.scope, session.text_len, hidden, context)
        if self._joint is not None and base:  # SD3: the base rows keep the layer's own processor
            own_args, own_kwargs = _rows(args, kwargs, slice(None, base))
            args, kwargs = _rows(args, kwargs, slice(base, None))
            own = self.original(attn, *own_args, **own_kwargs)
            mix = Mix(self.u, 0, session.target, session.scope, image, text)
            return _join(own, perturbing(mix, self.where, self.compute, attn, *args, **kwargs))
        mix = Mix(self.u, base, session.target, session.scope, image, text)
        return perturbing(mix, self.where, self.compute, attn, *args, **kwargs)
