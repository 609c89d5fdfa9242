"""``scenes``: a weight-free objective that checks a toy-scenes image against its prompt (pure image analysis,
independent of any model). See :mod:`headhunter.testbed.scenes` for the grammar.

It reads, under the prompt's style, as ``shapes`` reads its one object (:mod:`.shapes`):

* background — the median of the border pixels, nearest colour of the styled palette;
* the objects — the two largest 8-connected regions of pixels far from the background, each with its colour (median,
  nearest styled colour other than the background), shape (fill ratio of its bounding box) and centre;
* which region is which object — the assignment that agrees with more of the prompt's colours and shapes;
* relation — the dominant axis and sign of the step from the first object's centre to the second's;
* style — which style (or none) makes the background and first object closest to the palette.

Components, each right (1) or wrong (0): ``background``, ``color1``, ``color2``, ``shape1``, ``shape2``,
``relation``, ``style``; ``scenes`` is their mean. ``scenes-adherence`` is the prompt adherence the testbed reports:
1 only when both objects have their colours and the relation is right. Every component is registered on its own as
``scenes-<component>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..testbed.data import styled_palette
from ..testbed.scenes import RELATIONS, parse_scene_prompt
from .base import register_scorer
from .shapes import FILL, nearest_color, read_background, style_of

__all__ = ["ObjectSeen", "SceneObservation", "analyse_scene", "scene_components"]

COMPONENTS = ("background", "color1", "color2", "shape1", "shape2", "relation", "style")
_MIN_PIXELS = 3  # a region smaller than this is noise, not an object


@dataclass(frozen=True)
class ObjectSeen:
    color: str
    shape: str
    centre: tuple[float, float]  # (x, y) as fractions of the side
    pixels: int


@dataclass(frozen=True)
class SceneObservation:
    background: str
    objects: tuple[ObjectSeen, ...]  # largest first, at most two
    style: str | None


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of ``mask`` as index arrays [n, 2] (y, x), largest first."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, members = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny in range(max(0, y - 1), min(h, y + 2)):
                for nx in range(max(0, x - 1), min(w, x + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(np.array(members))
    return sorted(regions, key=len, reverse=True)


def analyse_scene(image: np.ndarray, style: str | None) -> SceneObservation:
    """Read a uint8 [H, W, 3] image with the palette as ``style`` shows it."""
    pixels = image.astype(np.float32)
    h, w, _ = pixels.shape
    palette = styled_palette(style)
    background_rgb, background, mask = read_background(pixels, palette)
    objects, first_rgb = [], None
    for region in _regions(mask)[:2]:
        if len(region) < _MIN_PIXELS:
            break
        ys, xs = region[:, 0], region[:, 1]
        rgb = np.median(pixels[ys, xs], axis=0)
        first_rgb = rgb if first_rgb is None else first_rgb
        fill = len(region) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        objects.append(ObjectSeen(nearest_color(rgb, palette, exclude=background),
                                  min(FILL, key=lambda s: abs(fill - FILL[s])),
                                  ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h), len(region)))
    first = objects[0].color if objects else None
    return SceneObservation(background, tuple(objects), style_of(background_rgb, first_rgb, background, first))


def _relation_of(a: tuple[float, float], b: tuple[float, float]) -> str:
    """The relation of an object at ``a`` to one at ``b``: the dominant axis and sign of the step a → b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    step = (float(np.sign(dx)), 0.0) if abs(dx) >= abs(dy) else (0.0, float(np.sign(dy)))
    return next(name for name, (rx, ry) in RELATIONS.items() if (np.sign(rx), np.sign(ry)) == step)


def scene_components(image: np.ndarray, prompt: str) -> dict[str, float]:
    """The components of one uint8 [H, W, 3] image against its prompt, and ``adherence``."""
    scene = parse_scene_prompt(prompt)
    seen = analyse_scene(image, scene.style)
    out = {"background": float(seen.background == scene.background), "style": float(seen.style == scene.style),
           "color1": 0.0, "color2": 0.0, "shape1": 0.0, "shape2": 0.0, "relation": 0.0}
    wanted = ((scene.color1, scene.shape1), (scene.color2, scene.shape2))
    if len(seen.objects) == 2:
        def agreement(order: tuple[ObjectSeen, ObjectSeen]) -> int:
            return sum(2 * (o.color == c) + (o.shape == s) for o, (c, s) in zip(order, wanted))

        a, b = seen.objects
        first, second = max(((a, b), (b, a)), key=agreement)  # ties keep the larger region first
        out.update(color1=float(first.color == scene.color1), color2=float(second.color == scene.color2),
                   shape1=float(first.shape == scene.shape1), shape2=float(second.shape == scene.shape2),
                   relation=float(_relation_of(first.centre, second.centre) == scene.relation))
    elif len(seen.objects) == 1:  # one object drawn: it counts for whichever the prompt's it matches better
        only = seen.objects[0]
        index = max((1, 2), key=lambda i: 2 * (only.color == wanted[i - 1][0]) + (only.shape == wanted[i - 1][1]))
        out[f"color{index}"] = float(only.color == wanted[index - 1][0])
        out[f"shape{index}"] = float(only.shape == wanted[index - 1][1])
    out["adherence"] = float(out["color1"] == out["color2"] == out["relation"] == 1.0)
    return out


def _per_image(images: torch.Tensor, prompts: Sequence[str], part: str | None) -> torch.Tensor:
    arrays = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    scores = []
    for array, prompt in zip(arrays, prompts):
        values = scene_components(array, prompt)
        scores.append(sum(values[c] for c in COMPONENTS) / len(COMPONENTS) if part is None else values[part])
    return torch.tensor(scores, dtype=torch.float32, device=images.device)


@register_scorer("scenes", reference=(0.5, 0.25))
def scenes(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Toy-scenes prompt fidelity in [0, 1]: the mean of background, both colours, both shapes, relation and style."""
    return _per_image(images, prompts, None)


for _part in (*COMPONENTS, "adherence"):
    register_scorer(f"scenes-{_part}", (lambda part: lambda images, prompts: _per_image(images, prompts, part))(_part),
                    reference=(0.5, 0.3), description=f"toy-scenes {_part} in {{0, 1}}")
