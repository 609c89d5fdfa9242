"""``headhunter.perturb`` on every supported transformer, against an explicit-attention reference.

The reference runs the stock forward with the attention replaced by a function written here: per head
``A = softmax(QKᵀ/√d)`` materialised as a matrix, the target map ``T`` materialised as a matrix (identity, uniform,
query-mean, max, or the image-scope mask), ``((1 − u)·A + u·T)·V`` with the head's u. Nothing of headhunter's
attention code is used by the reference.
"""

import pytest
import torch
from explicit_attention import reference_forward, stacked

import headhunter
from headhunter.heads import HeadLayout
from headhunter.testing import TINY_TRANSFORMERS, tiny_transformer

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
def test_perturb_equals_the_explicit_attention_reference(model_type, target):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    spec, per_layer = u_tables(layout)
    ours = perturbed_forward(transformer, inputs, spec, target=target)
    reference = reference_forward(model_type, transformer, inputs, per_layer, target)
    assert (ours - reference).abs().max() <= 1e-5
    with torch.no_grad():
        stock = stacked(transformer(**inputs, return_dict=False)[0])
    assert (ours - stock).abs().max() > 1e-3  # the perturbation is visible (the comparison above is not vacuous)


@pytest.mark.parametrize("model_type", ["sd3", "flux", "chroma", "flux2", "qwenimage", "wan"])
def test_image_scope_equals_the_explicit_reference(model_type):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    spec, per_layer = u_tables(layout)
    text_len = inputs.get("encoder_hidden_states").shape[1] if layout.num_double_layers else None
    ours = perturbed_forward(transformer, inputs, spec, scope="image", text_len=text_len)
    reference = reference_forward(model_type, transformer, inputs, per_layer, "identity", scope="image",
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


def test_a_perturbed_call_that_is_not_self_attention_is_refused():
    """SoftPAG's targets are maps over a layer's own tokens; a call with other keys (an IP-Adapter's image tokens,
    cross-attention) has none, so it is refused rather than mixed."""
    from headhunter.attention.dispatch import Mix, mix_target

    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 6, 2, 8)
    out = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="4 queries and 6 keys"):
        mix_target(q, k, k, None, out, Mix(torch.ones(2), 0, "identity", "joint"))


def test_only_the_first_attention_of_a_perturbed_layer_call_is_mixed(monkeypatch):
    """A processor that attends twice in one call (FLUX's IP-Adapter processor: its own tokens, then the adapter's
    image tokens) gets the target in its own attention only."""
    import sys
    import types

    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from headhunter.attention.dispatch import Mix, dispatch_patched, perturbing

    module = types.ModuleType("headhunter_test_two_attentions")
    module.dispatch_attention_fn = dispatch_attention_fn
    monkeypatch.setitem(sys.modules, module.__name__, module)
    g = torch.Generator().manual_seed(0)
    q, extra = torch.randn(1, 4, 2, 8, generator=g), torch.randn(1, 3, 2, 8, generator=g)

    def layer():
        return module.dispatch_attention_fn(q, q, q), module.dispatch_attention_fn(q, extra, extra)

    with dispatch_patched([module.__name__]):
        own, adapter = perturbing(Mix(torch.tensor([1.0, 0.0]), 0, "identity", "joint"), "L0", layer)
    assert module.dispatch_attention_fn is dispatch_attention_fn  # diffusers' function is back
    plain = dispatch_attention_fn(q, q, q)
    assert torch.allclose(own[:, :, 0], q[:, :, 0], atol=1e-6)  # u = 1, identity: each token's own value
    assert torch.equal(own[:, :, 1], plain[:, :, 1])  # u = 0: untouched
    assert torch.equal(adapter, dispatch_attention_fn(q, extra, extra))
