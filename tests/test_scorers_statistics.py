"""Weight-free scorers against hand-computed values and ordering properties."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from headhunter.scorers import load_scorer, register_scorer

NAMES = ["colorfulness", "contrast", "sharpness", "brightness", "darkness", "saturation", "warmth"]


def solid(r, g, b, size=8):
    return torch.tensor([r, g, b]).view(1, 3, 1, 1).expand(1, 3, size, size).float()


def test_hand_computed_values_on_solid_colours():
    red = solid(1.0, 0.0, 0.0)
    # rg = 255, yb = 127.5, no spread: C = 0.3 * sqrt(255^2 + 127.5^2)
    assert load_scorer("colorfulness")(red, "x").item() == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-6)
    assert load_scorer("brightness")(red, "x").item() == pytest.approx(0.299)
    assert load_scorer("darkness")(red, "x").item() == pytest.approx(0.701)
    assert load_scorer("saturation")(red, "x").item() == pytest.approx(1.0)
    assert load_scorer("warmth")(red, "x").item() == pytest.approx(1.0)
    assert load_scorer("warmth")(solid(0.0, 0.0, 1.0), "x").item() == pytest.approx(-1.0)
    gray = solid(0.5, 0.5, 0.5)
    for name in ("colorfulness", "contrast", "sharpness", "saturation", "warmth"):
        assert load_scorer(name)(gray, "x").item() == pytest.approx(0.0, abs=1e-9), name


def test_contrast_of_half_black_half_white_is_one_half():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :2] = 1.0
    assert load_scorer("contrast")(x, "x").item() == pytest.approx(0.5)


def test_checkerboard_is_sharper_than_its_blurred_copy():
    board = (np.indices((64, 64)).sum(0) // 4 % 2).astype(np.float32)
    image = torch.from_numpy(board)[None, None].expand(1, 3, 64, 64).clone()
    blurred = torch.nn.functional.avg_pool2d(image, 5, stride=1, padding=2, count_include_pad=False)
    sharp = load_scorer("sharpness")
    assert sharp(image, "x").item() > 4 * sharp(blurred, "x").item() > 0


def test_darkness_orders_a_ramp_of_brightness_levels():
    ramp = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.3, 0.5, 0.7, 0.9)])
    dark = load_scorer("darkness")(ramp, ["x"] * 5).tolist()
    assert dark == sorted(dark, reverse=True) and len(set(dark)) == 5


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_batch_composition_and_pil_equals_tensor(name):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    scorer = load_scorer(name)
    together = scorer(images, ["p"] * 4)
    assert together.shape == (4,)
    for i in range(4):
        assert torch.allclose(scorer(images[i : i + 1], "p"), together[i : i + 1], rtol=1e-6, atol=1e-7)
    assert torch.allclose(scorer(images.flip(0), ["p"] * 4), together.flip(0), rtol=1e-6, atol=1e-7)
    pil = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images]
    quantised = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(scorer(pil, ["p"] * 4), scorer(quantised, ["p"] * 4))


def test_composite_standardises_terms():
    images = torch.rand(2, 3, 8, 8)
    got = load_scorer("0.7*brightness + 0.3*warmth")(images, "x")
    b = load_scorer("brightness")(images, "x")
    w = load_scorer("warmth")(images, "x")
    expected = 0.7 * (b - 0.45) / 0.15 + 0.3 * (w - 0.05) / 0.1
    assert torch.allclose(got, expected, atol=1e-6)


def test_gradients_reach_pixels_only_when_asked():
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert not load_scorer("colorfulness")(images, "x").requires_grad
    load_scorer("colorfulness + sharpness", grad=True)(images, "x").sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_registered_user_objective_is_usable_by_name():
    @register_scorer("test-redness", reference=(0.5, 0.25))
    def redness(images, prompts):
        """mean red channel"""
        return images[:, 0].flatten(1).mean(1)

    images = torch.rand(3, 3, 8, 8)
    assert torch.equal(load_scorer("test-redness")(images, "x"), images[:, 0].flatten(1).mean(1))
    both = load_scorer("2*test-redness + brightness")(images, "x")
    assert both.shape == (3,)

    @register_scorer("test-keyword", argument="required")
    def keyword(images, prompts, word):
        return torch.tensor([float(word in p) for p in prompts])

    assert load_scorer("test-keyword:cat")(images, ["a cat", "a dog", "cat"]).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("spec,message", [("unknown", "unknown scorer 'unknown'"), ("0.5*", "bad objective term"),
                                          ("style:", "needs an argument"), ("", "empty objective spec"),
                                          ("brightness:x", "takes no ':argument'"), ("brightness +", "bad objective term")])
def test_bad_specs_are_value_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        load_scorer(spec)
