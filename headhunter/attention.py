"""SoftPAG attention processors and the perturbation plan they read.

For a perturbed head with softness u and target map T, the head's attention output becomes::

    (1 - u) · A·V + u · T·V          A = softmax(Q Kᵀ / √d) over the layer's whole joint sequence

Targets (``T·V`` is computed directly, never as an N×N map, except ``max`` which scores keys in query chunks):

* ``identity``   T = I                    →  T·V = V
* ``uniform``    T = 1/N                  →  T·V = mean_k V
* ``query_mean`` T = softmax(q̄ Kᵀ/√d)     →  one attention row for the mean query q̄ (after QK-norm and RoPE)
* ``max``        T = onehot(argmax QKᵀ)   →  the value of each query's best-scoring key (first index on ties)

Scope ``image`` (identity only) is the mask of diffusers' SD3 PAG: each image query attends to itself and to every
text token with its original logits; text queries are unchanged.

The unperturbed attention still goes through diffusers' ``dispatch_attention_fn``, so the attention backend a user
chose (native, flash, sage, xformers) keeps serving every head; only the perturbed rows get the extra term.

A :class:`PerturbationPlan` says, per batch row, layer and head, how strongly to perturb (``u[row, layer, head]``).
It is built per pipeline call and handed to the processors when they are installed by :func:`perturbed_heads`;
nothing is stored on the transformer beyond the lifetime of that context.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from .heads import HeadLayout
from .locking import holding_transformer

__all__ = [
    "SCOPES",
    "TARGETS",
    "PerturbationPlan",
    "SoftPAGFluxProcessor",
    "SoftPAGJointProcessor",
    "build_plan",
    "check_target_scope",
    "perturbed_heads",
    "soft_mix",
    "target_values",
    "image_scope_identity_values",
]

TARGETS = ("identity", "uniform", "query_mean", "max")
SCOPES = ("joint", "image")

# Elements of one chunk of the max target's score tensor; keeps its memory near 256 MiB in fp32.
_MAX_CHUNK_ELEMENTS = 1 << 26


def check_target_scope(target: str, scope: str) -> None:
    """Raise ValueError for an unknown target or scope, or a target that the ``image`` scope does not define."""
    if target not in TARGETS:
        raise ValueError(f"unknown pag_target {target!r}; choose one of {', '.join(TARGETS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown pag_scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "image" and target != "identity":
        raise ValueError(f"pag_scope='image' is defined for pag_target='identity' only, got pag_target={target!r}")


# ---------------------------------------------------------------------------------------------------------------------
# The math, on tensors laid out [rows, sequence, heads, head_dim] as diffusers' attention dispatch expects.
# ---------------------------------------------------------------------------------------------------------------------
def soft_mix(attn_out: torch.Tensor, target_out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """SoftPAG interpolation ``(1 - u)·A·V + u·T·V``.

    Args:
        attn_out: ``A·V``, shape [R, S, H, D].
        target_out: ``T·V``, shape [R, S, H, D] or broadcastable ([R, 1, H, D] for uniform / query_mean).
        u: softness per row and head, shape [R, H]; u = 0 returns ``attn_out`` unchanged.
    """
    u = u.to(attn_out.dtype)[:, None, :, None]
    return (1 - u) * attn_out + u * target_out


def target_values(q: torch.Tensor | None, k: torch.Tensor | None, v: torch.Tensor, target: str) -> torch.Tensor:
    """``T·V`` for a joint-scope target, without an N×N map (``max`` scores keys in chunks of queries).

    Args:
        q, k, v: [R, N, H, D] queries, keys and values as the attention uses them (after QK-norm and RoPE);
            identity and uniform read ``v`` only (q and k may be None).
        target: one of :data:`TARGETS`.
    Returns:
        [R, N, H, D], or [R, 1, H, D] for targets whose rows are all equal (uniform, query_mean).
    """
    if target == "identity":
        return v
    if target == "uniform":
        return v.mean(dim=1, keepdim=True)
    if target == "query_mean":
        q_bar = q.mean(dim=1, keepdim=True)  # [R, 1, H, D]
        logits = torch.einsum("rqhd,rkhd->rhqk", q_bar, k) * q.shape[-1] ** -0.5
        return torch.einsum("rhqk,rkhd->rqhd", logits.softmax(dim=-1), v)
    if target == "max":
        rows, n, heads, _ = q.shape
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, rows * heads * n))
        out = torch.empty_like(v)
        for start in range(0, n, chunk):
            scores = torch.einsum("rqhd,rkhd->rhqk", q[:, start : start + chunk], k)
            best = scores.argmax(dim=-1)  # first index on ties
            out[:, start : start + chunk] = torch.gather(
                v.permute(0, 2, 1, 3), 2, best[..., None].expand(-1, -1, -1, v.shape[-1])
            ).permute(0, 2, 1, 3)
        return out
    raise ValueError(f"unknown pag_target {target!r}; choose one of {', '.join(TARGETS)}")


def image_scope_identity_values(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice, text: slice
) -> torch.Tensor:
    """``T·V`` at the image queries for the image scope (diffusers' SD3 PAG mask): image query i attends to key i
    and to every text key with its original logits. (Text queries keep their attention, ``T·V = A·V``, so they
    need no target.)

    Args:
        q, k, v: [R, N, H, D]; ``image`` and ``text`` are the token slices of the joint sequence.
    Returns:
        [R, N_image, H, D]. Memory is [R, H, chunk, N_text + 1] at a time, never N×N.
    """
    q_img, k_img, v_img = q[:, image], k[:, image], v[:, image]
    k_txt, v_txt = k[:, text], v[:, text]
    scale = q.shape[-1] ** -0.5
    rows, n_img, heads, _ = q_img.shape
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, rows * heads * (k_txt.shape[1] + 1)))
    out = torch.empty_like(v_img)
    for start in range(0, n_img, chunk):
        sl = slice(start, start + chunk)
        self_logit = (q_img[:, sl] * k_img[:, sl]).sum(-1).transpose(1, 2)[..., None] * scale  # [R, H, c, 1]
        text_logits = torch.einsum("rqhd,rkhd->rhqk", q_img[:, sl], k_txt) * scale  # [R, H, c, T]
        weights = torch.cat([self_logit, text_logits], dim=-1).softmax(dim=-1)
        own = weights[..., :1].permute(0, 2, 1, 3) * v_img[:, sl]  # [R, c, H, D]
        out[:, sl] = own + torch.einsum("rhqk,rkhd->rqhd", weights[..., 1:], v_txt)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerturbationPlan:
    """Which heads each batch row perturbs, and how the perturbed rows join the batch.

    Attributes:
        u: float tensor [rows, layers, heads] of softness per row of the batch that the perturbed layers see.
        target, scope: see the module docstring.
        base_rows: rows the transformer is called with (uncond and cond branches).
        fork_layer: where the perturbed rows are made: at the input of this layer, rows ``fork_src`` of the
            ``base_rows`` are copied and appended, so blocks before it run once for both branches. With 0 the branch
            runs every block (no shared prefix).
        fork_src: indices (into the base rows) of the conditional rows the perturbed rows copy.
        samples: index of the generated image each perturbed row belongs to.
        text_len: text tokens in the joint sequence (needed by the image scope in FLUX single-stream blocks).
    """

    u: torch.Tensor
    target: str = "identity"
    scope: str = "joint"
    base_rows: int = 0
    fork_layer: int = 0
    fork_src: tuple[int, ...] = ()
    samples: tuple[int, ...] = ()
    text_len: int | None = None
    _rows_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_rows(self) -> int:
        return self.u.shape[0]

    @property
    def layers(self) -> list[int]:
        """Layers where some row has u > 0."""
        return torch.nonzero(self.u.amax(dim=(0, 2)) > 0).flatten().tolist()

    def rows_at(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(row indices with some u > 0 at ``layer``, their u [R, H]) on ``device``; computed once per device."""
        key = (layer, str(device))
        if key not in self._rows_cache:
            u = self.u[:, layer, :]
            rows = torch.nonzero(u.amax(dim=1) > 0).flatten()
            self._rows_cache[key] = (rows.to(device), u[rows].to(device))
        return self._rows_cache[key]


def build_plan(
    layout: HeadLayout,
    softness: Sequence[Mapping[tuple[int, int], float]],
    *,
    do_classifier_free_guidance: bool,
    target: str = "identity",
    scope: str = "joint",
    share_prefix: bool = True,
    text_len: int | None = None,
) -> PerturbationPlan | None:
    """Build the plan for one pipeline call.

    Args:
        layout: the transformer's :class:`HeadLayout`.
        softness: one ``{(layer, head): u}`` per generated image (already validated against ``layout``).
        do_classifier_free_guidance: the transformer batch is ``[uncond, cond]`` (else ``[cond]``).
        share_prefix: fork the perturbed rows at the first perturbed layer (True) or at layer 0.
    Returns:
        None when no image perturbs any head with u > 0 (then no perturbed branch is run at all).
    """
    check_target_scope(target, scope)
    batch = len(softness)
    per_sample = torch.zeros(batch, layout.num_layers, layout.num_heads)
    for index, heads in enumerate(softness):
        for (layer, head), u in heads.items():
            if not (0 <= layer < layout.num_layers and 0 <= head < layout.num_heads and 0.0 <= u <= 1.0):
                raise ValueError(f"image {index}: L{layer}H{head}@{u} is outside the model ({layout.describe()}) or u outside [0, 1]")
            per_sample[index, layer, head] = u
    samples = [i for i in range(batch) if per_sample[i].amax() > 0]
    if not samples:
        return None
    base_rows = 2 * batch if do_classifier_free_guidance else batch
    cond_offset = batch if do_classifier_free_guidance else 0
    u = torch.cat([torch.zeros(base_rows, layout.num_layers, layout.num_heads), per_sample[samples]])
    first_layer = int(torch.nonzero(u.amax(dim=(0, 2)) > 0)[0])
    return PerturbationPlan(
        u=u,
        target=target,
        scope=scope,
        base_rows=base_rows,
        fork_layer=first_layer if share_prefix else 0,
        fork_src=tuple(cond_offset + i for i in samples),
        samples=tuple(samples),
        text_len=text_len,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Processors
# ---------------------------------------------------------------------------------------------------------------------
class _SoftPAGProcessor:
    """Shared part of the SD3 and FLUX processors: perturbation of the rows and heads the plan names."""

    def __init__(self, layer: int, plan: PerturbationPlan, original: Any):
        self.layer = layer
        self.plan = plan
        # Keep the backend the user chose for this module (set_attention_backend writes it on processors).
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(
            q, k, v, attn_mask=mask, backend=self._attention_backend, parallel_config=self._parallel_config
        )

    def _perturb(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, image: slice, text: slice
    ) -> torch.Tensor:
        """Replace, in place, the planned rows of ``out`` ([B, N, H, D], the fresh attention output) by their SoftPAG
        mix. Only the perturbed rows are gathered, so the extra memory is a few copies of those rows."""
        if q.shape[0] != self.plan.num_rows:
            raise RuntimeError(
                f"layer {self.layer}: the batch has {q.shape[0]} rows but the perturbation plan has "
                f"{self.plan.num_rows}; call the transformer with the batch the plan was built for"
            )
        rows, u = self.plan.rows_at(self.layer, q.device)
        if out.requires_grad:  # attention backends may save their output for backward: do not write into it
            out = out.clone()
        target_name = self.plan.target
        if self.plan.scope == "image":
            target = image_scope_identity_values(q[rows], k[rows], v[rows], image, text)
            mixed = soft_mix(out[rows, image], target.to(out.dtype), u)
            out[rows, image] = mixed
            return out
        if target_name in ("identity", "uniform"):  # these targets need the values only
            target = target_values(None, None, v[rows], target_name)
        else:
            target = target_values(q[rows], k[rows], v[rows], target_name)
        out.index_copy_(0, rows, soft_mix(out[rows], target.to(out.dtype), u))
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

        out = self._attend(query, key, value, None)
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

        out = self._attend(query, key, value, None)
        n_text = encoder_hidden_states.shape[1] if has_context else self.plan.text_len
        if n_text is None and self.plan.scope == "image":
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


# ---------------------------------------------------------------------------------------------------------------------
# Installing a plan on a transformer
# ---------------------------------------------------------------------------------------------------------------------
def _row_expanding_hook(module: torch.nn.Module, plan: PerturbationPlan, names: Sequence[str]):
    """Forward pre-hook appending the perturbed rows (copies of ``plan.fork_src``) to every argument in ``names``
    that still has the base batch size, so a module after the fork sees the full batch."""
    signature = inspect.signature(module.forward)
    index_cache: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = signature.bind(*args, **kwargs)
        for name in names:
            value = bound.arguments.get(name)
            if isinstance(value, torch.Tensor) and value.shape[0] == plan.base_rows:
                device_key = str(value.device)
                if device_key not in index_cache:
                    index_cache[device_key] = torch.tensor(plan.fork_src, device=value.device)
                bound.arguments[name] = torch.cat([value, value.index_select(0, index_cache[device_key])])
        return bound.args, bound.kwargs

    return hook


@contextmanager
def perturbed_heads(transformer: torch.nn.Module, plan: PerturbationPlan) -> Iterator[HeadLayout]:
    """Install SoftPAG processors for ``plan`` on ``transformer``; restore the original processors (and remove the
    forking hooks) on exit, also when the body raises.

    Inside the context, call the transformer with the plan's ``base_rows``; it returns ``plan.num_rows`` rows: the
    base rows followed by one perturbed row per entry of ``plan.fork_src``.
    """
    layout = HeadLayout.from_transformer(transformer)
    if tuple(plan.u.shape[1:]) != (layout.num_layers, layout.num_heads):
        raise ValueError(
            f"plan covers {tuple(plan.u.shape[1:])} layers × heads but the transformer has "
            f"{(layout.num_layers, layout.num_heads)}"
        )
    if plan.scope == "image" and layout.model_type == "flux" and plan.text_len is None:
        raise ValueError("pag_scope='image' on FLUX needs the plan's text_len")
    originals: dict[int, Any] = {}
    handles: list[Any] = []
    with holding_transformer(transformer):
        try:
            for layer in plan.layers:
                attn = layout.attention(transformer, layer)
                originals[layer] = attn.processor
                cls = SoftPAGJointProcessor if layout.model_type == "sd3" else SoftPAGFluxProcessor
                attn.set_processor(cls(layer, plan, attn.processor))
            for layer in range(plan.fork_layer, layout.num_layers):
                block = layout.block(transformer, layer)
                names = ("hidden_states", "encoder_hidden_states", "temb")
                handles.append(block.register_forward_pre_hook(_row_expanding_hook(block, plan, names), with_kwargs=True))
            norm_out = transformer.norm_out
            handles.append(
                norm_out.register_forward_pre_hook(
                    _row_expanding_hook(norm_out, plan, ("conditioning_embedding",)), with_kwargs=True
                )
            )
            yield layout
        finally:
            for handle in handles:
                handle.remove()
            for layer, processor in originals.items():
                layout.attention(transformer, layer).set_processor(processor)
