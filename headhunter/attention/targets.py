"""The SoftPAG math, on tensors laid out [rows, sequence, heads, head_dim] as diffusers' attention dispatch expects.

For a perturbed head with softness u and target map T, the head's attention output becomes::

    (1 - u) · A·V + u · T·V          A = softmax(Q Kᵀ / √d) over the layer's whole joint sequence

Targets (``T·V`` is computed directly, never as an N×N map, except ``max`` which scores keys in query chunks):

* ``identity``   T = I                    →  T·V = V
* ``uniform``    T = 1/N                  →  T·V = mean_k V
* ``query_mean`` T = softmax(q̄ Kᵀ/√d)     →  one attention row for the mean query q̄ (after QK-norm and RoPE)
* ``max``        T = onehot(argmax QKᵀ)   →  the value of each query's best-scoring key (first index on ties)

Scope ``image`` (identity only) is the mask of diffusers' SD3 PAG: each image query attends to itself and to every
text token with its original logits; text queries are unchanged.

Logits and the mix are computed in at least fp32: in bf16 a softmax over thousands of keys and the difference
``T·V − A·V`` lose most of their bits.
"""

from __future__ import annotations

import torch

__all__ = ["SCOPES", "TARGETS", "check_target_scope", "image_scope_identity_values", "soft_mix", "target_values"]

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


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or wider when it already is (fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def soft_mix(attn_out: torch.Tensor, target_out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """SoftPAG interpolation ``(1 − u)·A·V + u·T·V``, computed as ``A·V + u·(T·V − A·V)`` in at least fp32 and
    returned in ``attn_out``'s dtype.

    Args:
        attn_out: ``A·V``, shape [R, S, H, D].
        target_out: ``T·V``, shape [R, S, H, D] or broadcastable ([R, 1, H, D] for uniform / query_mean).
        u: softness per row and head, shape [R, H]; u = 0 returns ``attn_out`` unchanged (bit for bit).
    """
    a = _wide(attn_out)
    u = u.to(a.dtype)[:, None, :, None]
    return (a + u * (_wide(target_out) - a)).to(attn_out.dtype)


def target_values(
    q: torch.Tensor | None, k: torch.Tensor | None, v: torch.Tensor, target: str, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``T·V`` for a joint-scope target, without an N×N map (``max`` scores keys in chunks of queries).

    Args:
        q, k, v: [R, N, H, D] queries, keys and values as the attention uses them (after QK-norm and RoPE);
            identity and uniform read ``v`` only (q and k may be None).
        target: one of :data:`TARGETS`.
        valid: optional [R, N] key-padding mask (True: a real token). Padded tokens are no keys of the target and
            take no part in the mean query; identity ignores it (every token keeps its own value).
    Returns:
        [R, N, H, D], or [R, 1, H, D] for targets whose rows are all equal (uniform, query_mean); in at least fp32
        except for identity, which returns ``v`` itself.
    """
    if target == "identity":
        return v
    weights = None if valid is None else valid.to(_wide(v).dtype)[:, :, None, None]  # [R, N, 1, 1]
    if target == "uniform":
        if weights is None:
            return _wide(v).mean(dim=1, keepdim=True)
        return (_wide(v) * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
    if target == "query_mean":
        q, k, v = _wide(q), _wide(k), _wide(v)
        if weights is None:
            q_bar = q.mean(dim=1, keepdim=True)  # [R, 1, H, D]
        else:
            q_bar = (q * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
        logits = torch.einsum("rqhd,rkhd->rhqk", q_bar, k) * q.shape[-1] ** -0.5
        if valid is not None:
            logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        return torch.einsum("rhqk,rkhd->rqhd", logits.softmax(dim=-1), v)
    if target == "max":
        q, k = _wide(q), _wide(k)
        rows, n, heads, _ = q.shape
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, rows * heads * k.shape[1]))
        picks = []
        for start in range(0, n, chunk):
            scores = torch.einsum("rqhd,rkhd->rhqk", q[:, start : start + chunk], k)
            if valid is not None:
                scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
            picks.append(scores.argmax(dim=-1))  # first on ties
        best = torch.cat(picks, dim=2)  # [R, H, N]
        return torch.gather(v.permute(0, 2, 1, 3), 2, best[..., None].expand(-1, -1, -1, v.shape[-1])).permute(0, 2, 1, 3)
    raise ValueError(f"unknown pag_target {target!r}; choose one of {', '.join(TARGETS)}")


def image_scope_identity_values(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice, text: slice, text_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``T·V`` at the image queries for the image scope (diffusers' SD3 PAG mask): image query i attends to key i
    and to every text key with its original logits. (Text queries keep their attention, ``T·V = A·V``, so they
    need no target.)

    Args:
        q, k, v: [R, N, H, D]; ``image`` and ``text`` are the token slices of the joint sequence.
        text_valid: optional [R, N_text] key-padding mask of the text tokens (padding is attended by no one).
    Returns:
        [R, N_image, H, D] in at least fp32. Memory is [R, H, chunk, N_text + 1] at a time, never N×N.
    """
    q, k, v = _wide(q), _wide(k), _wide(v)
    q_img, k_img, v_img = q[:, image], k[:, image], v[:, image]
    k_txt, v_txt = k[:, text], v[:, text]
    scale = q.shape[-1] ** -0.5
    rows, n_img, heads, _ = q_img.shape
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, rows * heads * (k_txt.shape[1] + 1)))
    parts = []
    for start in range(0, n_img, chunk):
        sl = slice(start, start + chunk)
        self_logit = (q_img[:, sl] * k_img[:, sl]).sum(-1).transpose(1, 2)[..., None] * scale  # [R, H, c, 1]
        text_logits = torch.einsum("rqhd,rkhd->rhqk", q_img[:, sl], k_txt) * scale  # [R, H, c, T]
        if text_valid is not None:
            text_logits = text_logits.masked_fill(~text_valid[:, None, None, :], float("-inf"))
        weights = torch.cat([self_logit, text_logits], dim=-1).softmax(dim=-1)
        own = weights[..., :1].permute(0, 2, 1, 3) * v_img[:, sl]  # [R, c, H, D]
        parts.append(own + torch.einsum("rhqk,rkhd->rqhd", weights[..., 1:], v_txt))
    return torch.cat(parts, dim=1)
