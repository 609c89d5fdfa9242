import pytest
import torch

from headhunter.attention import image_scope_identity_values, soft_mix, target_values
from headhunter.guidance import adaptive_scale, check_interval, guided_prediction, in_interval, scatter_perturbed


def test_guided_prediction_hand_values():
    vc, vu, vp = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.5])
    # v_u + g (v_c - v_u) + w (v_c - v_p) = 1 + 3*1 + 2*0.5
    assert guided_prediction(vc, vp, 2.0, vu, 3.0).item() == 5.0
    assert guided_prediction(vc, vp, 2.0).item() == 3.0  # 2 + 2*0.5
    assert guided_prediction(vc, None, 2.0, vu, 3.0).item() == 4.0


def test_scatter_keeps_cond_for_unperturbed_images():
    vc = torch.arange(3.0)[:, None]
    out = scatter_perturbed(vc, torch.tensor([[10.0]]), torch.tensor([1]))
    assert out.flatten().tolist() == [0.0, 10.0, 2.0] and vc.flatten().tolist() == [0.0, 1.0, 2.0]
    rows = torch.tensor([[5.0], [6.0], [7.0]])
    assert scatter_perturbed(vc, rows, None).flatten().tolist() == [5.0, 6.0, 7.0]  # every image perturbed


def test_adaptive_scale_and_interval():
    assert adaptive_scale(3.0, 0.0, 500) == 3.0
    assert adaptive_scale(3.0, 0.01, 900) == pytest.approx(2.0)
    assert adaptive_scale(3.0, 0.01, 500) == 0.0
    assert [in_interval(i, 4, (0.25, 0.75)) for i in range(4)] == [False, True, True, False]
    with pytest.raises(ValueError):
        check_interval((0.5, 0.2))
    with pytest.raises(ValueError):
        check_interval("ab")


def _explicit(q, k, v, t):
    n, d = q.shape[1], q.shape[-1]
    if t == "uniform":
        m = torch.full((n, n), 1 / n, dtype=v.dtype)
        return torch.einsum("qk,bkhd->bqhd", m, v)
    if t == "query_mean":
        row = (torch.einsum("bhd,bkhd->bhk", q.mean(1), k) / d**0.5).softmax(-1)
        return torch.einsum("bhk,bkhd->bhd", row, v)[:, None].expand_as(v)
    if t == "max":
        idx = torch.einsum("bqhd,bkhd->bhqk", q, k).argmax(-1)
        onehot = torch.nn.functional.one_hot(idx, n).to(v.dtype)
        return torch.einsum("bhqk,bkhd->bqhd", onehot, v)
    return v


@pytest.mark.parametrize("target", ["identity", "uniform", "query_mean", "max"])
def test_targets_match_explicit_maps(target, monkeypatch):
    import headhunter.attention.targets as targets

    monkeypatch.setattr(targets, "_MAX_CHUNK_ELEMENTS", 64)  # force several query chunks for max
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 13, 3, 4, dtype=torch.float64) for _ in range(3))
    got = target_values(q, k, v, target).expand_as(v)
    assert torch.allclose(got, _explicit(q, k, v, target), atol=1e-12)


def test_max_ties_take_first_index():
    q = torch.ones(1, 3, 1, 2)
    k = torch.ones(1, 3, 1, 2)  # every score equal
    v = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    assert target_values(q, k, v, "max")[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_image_scope_matches_masked_softmax(monkeypatch):
    import headhunter.attention.targets as targets

    monkeypatch.setattr(targets, "_MAX_CHUNK_ELEMENTS", 50)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 9, 2, 4, dtype=torch.float64) for _ in range(3))
    image, text = slice(3, 9), slice(0, 3)  # FLUX order: text first
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    out = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)
    mask = torch.zeros(9, 9)
    mask[3:, 3:] = float("-inf")
    mask[range(3, 9), range(3, 9)] = 0
    expected = torch.einsum("bhqk,bkhd->bqhd", (logits + mask).softmax(-1), v)
    got = image_scope_identity_values(q, k, v, image, text)
    assert torch.allclose(got, expected[:, image], atol=1e-12)
    assert torch.allclose(out[:, text], expected[:, text], atol=1e-12)  # text rows keep A·V


def test_soft_mix_u_zero_is_exact():
    a, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    u = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]])
    out = soft_mix(a, t, u)
    assert torch.equal(out[:, :, 0], a[:, :, 0]) and torch.equal(out[1], a[1])
    assert torch.allclose(out[0, :, 2], t[0, :, 2]) and torch.allclose(out[0, :, 1], (a[0, :, 1] + t[0, :, 1]) / 2)
