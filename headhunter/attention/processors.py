"""SoftPAG attention processors for SD3 / SD3.5 joint attention and FLUX.1 double- and single-stream attention.

A processor stands in for the stock one of its layer while a :class:`~headhunter.attention.install.PerturbationSession`
is installed. When its layer has no perturbed rows (before the fork, on a step where the branch does not run) it calls
the stock processor itself, so those steps are the stock computation; otherwise it computes the attention through
diffusers' ``dispatch_attention_fn`` (the user's backend keeps serving every head) and mixes the target into the
perturbed rows with the softness the session holds for this layer. Everything it reads per call is a tensor or a value
that stays the same between calls of one shape, so a compiled transformer is not recompiled when the heads change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .targets import image_scope_identity_values, soft_mix, target_values

if TYPE_CHECKING:
    from .install import PerturbationSession

__all__ = ["SoftPAGFluxProcessor", "SoftPAGJointProcessor"]


class _SoftPAGProcessor:
    """Shared part of the SD3 and FLUX processors: perturbation of the rows the session's plan adds."""

    def __init__(self, session: "PerturbationSession"):
        self.session = session
        self.u: torch.Tensor | None = None  # [perturbed rows, heads] of this layer, set per call by the session
        self.original: Any = None
        self._attention_backend = None
        self._parallel_config = None

    def attach(self, original: Any) -> None:
        """Stand in for ``original`` (the stock processor): keep its backend and parallel config, and call it where
        this layer perturbs nothing."""
        self.original = original
        # set_attention_backend writes the user's backend on the processors; keep serving it
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def _perturbs(self, rows: int) -> bool:
        session = self.session
        if not session.active or rows <= session.base_rows:
            # before the fork, or a call with fewer rows than the plan's (SD3's skip-layer guidance pass): stock
            return False
        if rows != session.base_rows + session.perturbed_rows:
            raise RuntimeError(
                f"the batch has {rows} rows but the perturbation plan has {session.base_rows} "
                f"base rows and {session.perturbed_rows} perturbed ones; call the transformer with the batch the plan "
                "was built for"
            )
        return True

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(q, k, v, backend=self._attention_backend, parallel_config=self._parallel_config)

    def _perturb(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, image: slice, text: slice
    ) -> torch.Tensor:
        """Mix the target into the perturbed rows (the last ones) of ``out`` ([B, N, H, D], the fresh attention
        output). A row whose u is 0 for a head keeps that head's output bit for bit."""
        session = self.session
        base = session.base_rows
        u = self.u
        if out.requires_grad:  # attention backends may save their output for backward: do not write into it
            out = out.clone()
        if session.scope == "image":
            target = image_scope_identity_values(q[base:], k[base:], v[base:], image, text)
            out[base:, image] = soft_mix(out[base:, image], target, u)
            return out
        if session.target in ("identity", "uniform"):  # these targets need the values only
            target = target_values(None, None, v[base:], session.target)
        else:
            target = target_values(q[base:], k[base:], v[base:], session.target)
        out[base:] = soft_mix(out[base:], target, u)
        return out


def _project(attn: Any, x: torch.Tensor, fused: str, names: tuple[str, str, str]) -> tuple[torch.Tensor, ...]:
    """q, k, v projections of ``x``: the fused linear ``fused`` after ``attn.fuse_projections()``, else ``names``."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, fused):
        return tuple(getattr(attn, fused)(x).chunk(3, dim=-1))
    return tuple(getattr(attn, name)(x) for name in names)


class SoftPAGJointProcessor(_SoftPAGProcessor):
    """SoftPAG for SD3 / SD3.5 joint attention (``JointAttnProcessor2_0`` semantics: [image; text] tokens, optional
    QK RMS-norm, fused QKV, ``context_pre_only`` in the last block)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self._perturbs(hidden_states.shape[0]):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
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

        out = self._attend(query, key, value)
        n_total = query.shape[1]
        out = self._perturb(query, key, value, out, slice(0, n_image), slice(n_image, n_total))
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


class SoftPAGFluxProcessor(_SoftPAGProcessor):
    """SoftPAG for FLUX.1 attention (``FluxAttnProcessor`` semantics): double-stream blocks ([text; image], separate
    projections) and single-stream blocks (one concatenated sequence, no output projection); RoPE on q and k."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self._perturbs(hidden_states.shape[0]):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise ValueError("attention masks are not supported on perturbed FLUX layers")
        query, key, value = _project(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"))
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        query = attn.norm_q(query)
        key = attn.norm_k(key)

        has_context = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if has_context:
            c_query, c_key, c_value = _project(
                attn, encoder_hidden_states, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")
            )
            c_query, c_key, c_value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (c_query, c_key, c_value))
            c_query = attn.norm_added_q(c_query)
            c_key = attn.norm_added_k(c_key)
            query = torch.cat([c_query, query], dim=1)
            key = torch.cat([c_key, key], dim=1)
            value = torch.cat([c_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = self._attend(query, key, value)
        n_text = encoder_hidden_states.shape[1] if has_context else self.session.text_len
        if n_text is None and self.session.scope == "image":
            raise ValueError("pag_scope='image' on a FLUX single-stream block needs the plan's text_len")
        n_text = n_text or 0
        out = self._perturb(query, key, value, out, slice(n_text, query.shape[1]), slice(0, n_text))
        hidden_states = out.flatten(2, 3).to(query.dtype)

        if has_context:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [n_text, hidden_states.shape[1] - n_text], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states
