"""An explicit-attention SoftPAG reference, independent of headhunter's attention code: per head
``A = softmax(QKᵀ/√d)`` and the target map ``T`` materialised as matrices, ``((1 − u)·A + u·T)·V``, installed in a
stock transformer by replacing the attention function its processors call."""

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from headhunter.heads import HeadLayout

# per model: the module whose attention function the reference replaces, and the token order of the joint sequence
ATTENTION_MODULE = {
    "flux": "diffusers.models.transformers.transformer_flux",
    "chroma": "diffusers.models.transformers.transformer_flux",
    "flux2": "diffusers.models.transformers.transformer_flux2",
    "qwenimage": "diffusers.models.transformers.transformer_qwenimage",
    "zimage": "diffusers.models.transformers.transformer_z_image",
    "wan": "diffusers.models.transformers.transformer_wan",
}


def explicit_attention(q, k, v, mask, u, target, image=None):
    """q, k, v: [B, S, H, D]; u: [H], or [B, H] one row each (None: plain attention); image: (image slice, text
    slice) for the image scope."""
    q, k, v = (x.double() for x in (q, k, v))
    batch, n, heads, dim = q.shape
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / dim**0.5
    valid = torch.ones(batch, k.shape[1], dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
            valid = mask.reshape(batch, -1) if mask.numel() == batch * k.shape[1] else valid
        else:
            logits = logits + mask
    A = logits.softmax(-1)
    if u is None:
        return torch.einsum("bhqk,bkhd->bqhd", A, v).float()
    if image is not None:  # image queries: themselves and the text, with their logits; text queries: unchanged
        img, txt = image
        keep = torch.zeros(n, n, dtype=torch.bool)
        idx = torch.arange(n)[img]
        keep[idx, idx] = True
        keep[idx.min() : idx.max() + 1, txt] = True
        keep[torch.arange(n)[txt]] = True
        T = logits.masked_fill(~keep, float("-inf")).softmax(-1)
        T[:, :, torch.arange(n)[txt]] = A[:, :, torch.arange(n)[txt]]
    elif target == "identity":
        T = torch.eye(n, dtype=A.dtype).expand(batch, heads, n, n)
    elif target == "uniform":
        T = (valid.double() / valid.sum(-1, keepdim=True))[:, None, None, :].expand(batch, heads, n, n)
    elif target == "query_mean":
        w = valid.double()[:, :, None, None]
        q_bar = (q * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        row = (torch.einsum("bqhd,bkhd->bhqk", q_bar, k) / dim**0.5).masked_fill(~valid[:, None, None, :], float("-inf"))
        T = row.softmax(-1).expand(batch, heads, n, n)
    else:  # max: one-hot at each query's best key among the real ones (first on ties)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k).masked_fill(~valid[:, None, None, :], float("-inf"))
        T = F.one_hot(scores.argmax(-1), n).double()
    u = u.double()[None, :, None, None] if u.ndim == 1 else u.double()[:, :, None, None]  # [H] or one row each [B, H]
    M = (1 - u) * A + u * T
    return torch.einsum("bhqk,bkhd->bqhd", M, v).float()


@contextmanager
def explicit_perturbation(model_type, transformer, per_layer, target, scope="joint", text_len=None):
    """Inside the block, every addressed attention of ``transformer`` is computed by :func:`explicit_attention`, with
    ``per_layer[layer]`` ([heads] u) on the perturbed layers; other attention calls are plain explicit attention."""
    layout = HeadLayout.from_transformer(transformer)
    current = {}
    handles = []
    for layer in range(layout.num_layers):
        attention = layout.attention(transformer, layer)

        def enter(module, args, kwargs, layer=layer):
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            current.update(layer=layer, text=None if context is None else context.shape[1],
                           image=args[0].shape[1] if args else kwargs["hidden_states"].shape[1])

        handles.append(attention.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(attention.register_forward_hook(lambda *a: current.clear()))

    def slices(n):
        kind = layout.block_kind(current["layer"])
        if kind == "joint":  # SD3: [image; text]
            return slice(0, current["image"]), slice(current["image"], n)
        if kind == "self":
            return slice(0, n), slice(0, 0)
        text = current["text"] if kind == "double" else text_len
        return slice(text, n), slice(0, text)

    def attend(q, k, v, mask):
        layer = current.get("layer")
        u = per_layer.get(layer) if layer is not None else None
        image = slices(q.shape[1]) if scope == "image" and u is not None else None
        return explicit_attention(q, k, v, mask, u, target, image)

    if model_type == "sd3":
        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):  # [B, H, S, D]
            out = attend(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask)
            return out.transpose(1, 2)

        owner, name, replacement = F, "scaled_dot_product_attention", sdpa
    else:
        def dispatch(q, k, v, attn_mask=None, *args, **kwargs):
            return attend(q, k, v, attn_mask)

        owner, name, replacement = sys.modules[ATTENTION_MODULE[model_type]], "dispatch_attention_fn", dispatch
    saved = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, saved)
        for handle in handles:
            handle.remove()


def reference_forward(model_type, transformer, inputs, per_layer, target, scope="joint", text_len=None):
    """The stock forward with every addressed attention computed by :func:`explicit_attention`."""
    with torch.no_grad(), explicit_perturbation(model_type, transformer, per_layer, target, scope, text_len):
        return stacked(transformer(**inputs, return_dict=False)[0])


def stacked(output):
    return output if torch.is_tensor(output) else torch.stack(list(output))


