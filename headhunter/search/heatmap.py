"""Heat maps of per-head scores (layers × heads) as PNG, drawn with Pillow alone."""

from __future__ import annotations

import math
from typing import Mapping

from PIL import Image, ImageDraw

__all__ = ["heatmap_image"]

# A perceptually ordered ramp (dark blue → teal → yellow), interpolated linearly.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _color(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))


def heatmap_image(
    scores: Mapping[tuple[int, int], float], num_layers: int, num_heads: int, selected: set | None = None, cell: int = 12
) -> Image.Image:
    """Rows are layers (L0 at the top), columns heads. Gray: not evaluated; red cross: the objective failed (NaN);
    white outline: selected heads. A colour scale under the grid gives the scores at its two ends."""
    margin, scale_height = 28, 34
    grid_width = num_heads * cell
    width = margin + max(grid_width, 150) + 1
    image = Image.new("RGB", (width, margin + num_layers * cell + 1 + scale_height), "white")
    draw = ImageDraw.Draw(image)
    finite = [v for v in scores.values() if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (high - low) or 1.0
    for layer in range(num_layers):
        if layer % 4 == 0:
            draw.text((2, margin + layer * cell), f"L{layer}", fill="black")
        for head in range(num_heads):
            x, y = margin + head * cell, margin + layer * cell
            value = scores.get((layer, head))
            if value is None:
                fill = (200, 200, 200)
            elif not math.isfinite(value):
                fill = (255, 255, 255)
            else:
                fill = _color((value - low) / span)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill)
            if value is not None and not math.isfinite(value):
                draw.line([x, y, x + cell - 1, y + cell - 1], fill="red")
                draw.line([x, y + cell - 1, x + cell - 1, y], fill="red")
            if selected and (layer, head) in selected:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline="white", width=2)
    for head in range(0, num_heads, 4):
        draw.text((margin + head * cell, 2), f"H{head}", fill="black")
    _colour_scale(draw, margin, margin + num_layers * cell + 8, max(grid_width, 150), (low, high) if finite else None)
    return image


def _colour_scale(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, span: tuple[float, float] | None) -> None:
    """The ramp from the lowest to the highest score, labelled with both."""
    for i in range(width):
        draw.line([x + i, y, x + i, y + 9], fill=_color(i / max(1, width - 1)))
    if span is None:
        draw.text((x, y + 12), "no scores yet", fill="black")
        return
    low, high = (f"{v:.4g}" for v in span)
    draw.text((x, y + 12), low, fill="black")
    draw.text((x + width - 6 * len(high), y + 12), high, fill="black")
