"""``shapes``: a weight-free objective that checks a toy-shapes image against its prompt (pure image analysis,
independent of any model). See :mod:`headhunter.testbed.data` for the grammar.

For each image and prompt it measures, under the prompt's style (or no style):

* background colour — the median of the border pixels, nearest colour of the styled palette;
* foreground colour — the median of the pixels that are far from the background colour, nearest styled colour;
* position — the centroid of those pixels, nearest of the five positions;
* shape — the fill ratio of those pixels in their bounding box: circle π/4, square 1, triangle 1/2;
* style — which style (or none) makes the stated colours closest to the observed ones.

``shapes`` is the mean of five graded components in [0, 1] (colour components fall off with the distance to the
stated colour, position and style are right or wrong, shape falls off with the fill-ratio error); the components are
registered on their own as ``shapes-background``, ``shapes-foreground``, ``shapes-position``, ``shapes-shape`` and
``shapes-style``, and :func:`analyse` returns what was seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..testbed.data import POSITIONS, STYLES, parse_prompt, styled_palette
from .base import register_scorer

__all__ = ["FILL", "Observation", "analyse", "components", "foreground_mask", "nearest_color",
           "read_background", "style_of"]

FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
_COLOR_SCALE = 60.0  # RGB distance at which a colour component has fallen to 1/e


@dataclass(frozen=True)
class Observation:
    """What an image shows, read against one prompt's style."""

    background: str
    foreground: str | None
    position: str | None
    shape: str | None
    style: str | None
    background_rgb: np.ndarray
    foreground_rgb: np.ndarray | None
    fill: float | None


def nearest_color(rgb: np.ndarray, palette: dict[str, np.ndarray], exclude: str | None = None) -> str:
    return min((name for name in palette if name != exclude), key=lambda name: float(np.linalg.norm(rgb - palette[name])))


def foreground_mask(pixels: np.ndarray, background_rgb: np.ndarray, palette: dict[str, np.ndarray],
                    background: str) -> np.ndarray:
    """Pixels farther from the observed background than half the distance to the nearest other palette colour."""
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    return distance > 0.5 * min(float(np.linalg.norm(palette[c] - palette[background])) for c in palette
                                if c != background)


def read_background(pixels: np.ndarray, palette: dict[str, np.ndarray]) -> tuple[np.ndarray, str, np.ndarray]:
    """(background colour seen: the median of the border pixels, its nearest palette colour, the foreground mask)
    of float [H, W, 3] ``pixels``."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_color(background_rgb, palette)
    return background_rgb, background, foreground_mask(pixels, background_rgb, palette, background)


def analyse(image: np.ndarray, style: str | None) -> Observation:
    """Read a uint8 [H, W, 3] image with the palette as ``style`` shows it."""
    pixels = image.astype(np.float32)
    h, w, _ = pixels.shape
    palette = styled_palette(style)
    background_rgb, background, mask = read_background(pixels, palette)
    if mask.sum() < 2:
        return Observation(background, None, None, None, style_of(background_rgb, None, background, None),
                           background_rgb, None, None)
    foreground_rgb = np.median(pixels[mask], axis=0)
    foreground = nearest_color(foreground_rgb, palette, exclude=background)
    ys, xs = np.nonzero(mask)
    centre = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    position = min(POSITIONS, key=lambda p: math.dist(centre, POSITIONS[p]))
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(mask.sum() / box)
    shape = min(FILL, key=lambda s: abs(fill - FILL[s]))
    return Observation(background, foreground, position, shape,
                       style_of(background_rgb, foreground_rgb, background, foreground), background_rgb,
                       foreground_rgb, fill)


def style_of(background_rgb: np.ndarray, foreground_rgb: np.ndarray | None, background: str,
              foreground: str | None) -> str | None:
    """The style (or None) under which the observed colours are closest to the palette's."""
    def error(style: str | None) -> float:
        palette = styled_palette(style)
        total = float(np.linalg.norm(background_rgb - palette[background]))
        if foreground_rgb is not None and foreground is not None:
            total += float(np.linalg.norm(foreground_rgb - palette[foreground]))
        return total

    return min((None, *STYLES), key=error)


def components(image: np.ndarray, prompt: str) -> dict[str, float]:
    """The five graded components of one uint8 [H, W, 3] image against its prompt."""
    scene = parse_prompt(prompt)
    seen = analyse(image, scene.style)
    palette = styled_palette(scene.style)
    background = math.exp(-float(np.linalg.norm(seen.background_rgb - palette[scene.background])) / _COLOR_SCALE)
    if seen.foreground_rgb is None:
        return {"background": background, "foreground": 0.0, "position": 0.0, "shape": 0.0,
                "style": float(seen.style == scene.style)}
    foreground = math.exp(-float(np.linalg.norm(seen.foreground_rgb - palette[scene.foreground])) / _COLOR_SCALE)
    shape = max(0.0, 1.0 - abs(seen.fill - FILL[scene.shape]) / 0.25)
    return {"background": background, "foreground": foreground, "position": float(seen.position == scene.position),
            "shape": shape, "style": float(seen.style == scene.style)}


def _per_image(images: torch.Tensor, prompts: Sequence[str], part: str | None) -> torch.Tensor:
    arrays = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    scores = []
    for array, prompt in zip(arrays, prompts):
        values = components(array, prompt)
        scores.append(sum(values.values()) / len(values) if part is None else values[part])
    return torch.tensor(scores, dtype=torch.float32, device=images.device)


@register_scorer("shapes", reference=(0.5, 0.25))
def shapes(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Toy-shapes prompt fidelity in [0, 1]: the mean of background, foreground, position, shape and style."""
    return _per_image(images, prompts, None)


for _part in ("background", "foreground", "position", "shape", "style"):
    register_scorer(f"shapes-{_part}", (lambda part: lambda images, prompts: _per_image(images, prompts, part))(_part),
                    reference=(0.5, 0.3), description=f"toy-shapes {_part} component in [0, 1]")
