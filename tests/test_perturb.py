"""``headhunter.perturb`` on every supported transformer, against an explicit-attention reference.

The reference runs the stock forward with the attention replaced by a function written here: per head
``A = softmax(QKᵀ/√d)`` materialised as a matrix, the target map ``T`` materialised as a matrix (identity, uniform,
query-mean, max, or the image-scope mask), ``((1 − u)·A + u·T)·V`` with the head's u. Nothing of headhunter's
attention code is used by the reference.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import headhunter
from headhunter.heads import HeadLayout
from headhunter.testing import TINY_TRANSFORMERS, tiny_transformer

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
    """q, k, v: [B, S, H, D]; u: [H] (None: plain attention); image: (image slice, text slice) for the image scope."""
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
    M = (1 - u.double())[None, :, None, None] * A + u.double()[None, :, None, None] * T
    return torch.einsum("bhqk,bkhd->bqhd", M, v).float()


def reference_forward(model_type, transformer, inputs, per_layer, target, monkeypatch, scope="joint", text_len=None):
    """The stock forward with every addressed attention computed by :func:`explicit_attention`."""
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

        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    else:
        def dispatch(q, k, v, attn_mask=None, *args, **kwargs):
            return attend(q, k, v, attn_mask)

        monkeypatch.setattr(sys.modules[ATTENTION_MODULE[model_type]], "dispatch_attention_fn", dispatch)
    try:
        with torch.no_grad():
            return stacked(transformer(**inputs, return_dict=False)[0])
    finally:
        monkeypatch.undo()
        for handle in handles:
            handle.remove()


def stacked(output):
    return output if torch.is_tensor(output) else torch.stack(list(output))


def perturbed_forward(transformer, inputs, heads, **options):
    with torch.no_grad(), headhunter.perturb(transformer, heads, **options):
        return stacked(transformer(**inputs, return_dict=False)[0])


def u_tables(layout):
    """Mixed per-head u on the first and the last layer (for two-stream models: a double and a single one)."""
    first = torch.tensor([0.7] + [0.0] * (layout.num_heads - 1))
    last = torch.tensor([1.0, 0.3] + [0.5] * (layout.num_heads - 2))
    spec = f"L0H0@0.7,L{layout.num_layers - 1}H0,L{layout.num_layers - 1}H1@0.3"
    if layout.num_heads > 2:
        spec += f",L{layout.num_layers - 1}H2-{layout.num_heads - 1}@0.5"
    return spec, {0: first, layout.num_layers - 1: last}


@pytest.mark.parametrize("model_type", TINY_TRANSFORMERS)
@pytest.mark.parametrize("target", ["identity", "uniform", "query_mean", "max"])
def test_perturb_equals_the_explicit_attention_reference(model_type, target, monkeypatch):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    spec, per_layer = u_tables(layout)
    ours = perturbed_forward(transformer, inputs, spec, target=target)
    reference = reference_forward(model_type, transformer, inputs, per_layer, target, monkeypatch)
    assert (ours - reference).abs().max() <= 1e-5
    with torch.no_grad():
        stock = stacked(transformer(**inputs, return_dict=False)[0])
    assert (ours - stock).abs().max() > 1e-3  # the perturbation is visible (the comparison above is not vacuous)


@pytest.mark.parametrize("model_type", ["sd3", "flux", "chroma", "flux2", "qwenimage", "wan"])
def test_image_scope_equals_the_explicit_reference(model_type, monkeypatch):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    spec, per_layer = u_tables(layout)
    text_len = inputs.get("encoder_hidden_states").shape[1] if layout.num_double_layers else None
    ours = perturbed_forward(transformer, inputs, spec, scope="image", text_len=text_len)
    reference = reference_forward(model_type, transformer, inputs, per_layer, "identity", monkeypatch, scope="image",
                                  text_len=text_len)
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("model_type", TINY_TRANSFORMERS)
def test_u_zero_is_the_stock_forward_bit_for_bit_and_the_processors_come_back(model_type):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    before = [type(layout.attention(transformer, layer).processor) for layer in range(layout.num_layers)]
    with torch.no_grad():
        stock = stacked(transformer(**inputs, return_dict=False)[0])
    ours = perturbed_forward(transformer, inputs, f"L0@0,L{layout.num_layers - 1}H1@0", target="uniform")
    assert torch.equal(ours, stock)
    assert [type(layout.attention(transformer, layer).processor) for layer in range(layout.num_layers)] == before


@pytest.mark.parametrize("model_type", ["flux", "flux2", "qwenimage", "zimage", "wan"])
def test_the_users_attention_backend_still_serves_the_heads(model_type, monkeypatch):
    """With a backend chosen by the user, every attention call of a perturbed forward goes through it."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    transformer, inputs = tiny_transformer(model_type)
    transformer.set_attention_backend("_native_math")
    name = AttentionBackendName("_native_math")
    real = _AttentionBackendRegistry._backends[name]
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counting)
    with torch.no_grad():
        transformer(**inputs, return_dict=False)
    stock_calls = len(calls)
    calls.clear()
    perturbed_forward(transformer, inputs, "L0H1,L1", target="query_mean")
    assert stock_calls > 0 and len(calls) == stock_calls


def test_unsupported_input_is_refused_clearly():
    transformer, inputs = tiny_transformer("zimage")
    with pytest.raises(ValueError, match="not supported on Z-Image"):
        with headhunter.perturb(transformer, "L0H0", scope="image"):
            pass
    flux, _ = tiny_transformer("flux")
    with pytest.raises(ValueError, match="needs text_len"):
        with headhunter.perturb(flux, "L3H0", scope="image"):
            pass
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        with headhunter.perturb(flux, "L9H0"):
            pass
    with pytest.raises(RuntimeError, match="does not nest"):
        with headhunter.perturb(flux, "L0H0"), headhunter.perturb(flux, "L0H1"):
            pass
    with pytest.raises(ValueError, match="Linear is not supported.*FluxTransformer2DModel.*WanTransformer3DModel"):
        with headhunter.perturb(torch.nn.Linear(2, 2), "L0H0"):
            pass
