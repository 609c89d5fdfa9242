"""The head picker: a layers × heads grid image, and the mapping from a click on it back to a head."""

from __future__ import annotations

from PIL import Image, ImageDraw

from headhunter.heads import HeadLayout, HeadSet

__all__ = ["CELL", "MARGIN", "grid_image", "head_at"]

CELL = 16
MARGIN = 30


def grid_image(layout: HeadLayout, selected: HeadSet) -> Image.Image:
    """Rows are layers (L0 at the top), columns heads; selected heads are orange, FLUX's single-stream layers have a
    darker background."""
    chosen = {(h.layer, h.head) for h in selected.resolve(layout)} if selected else set()
    width, height = MARGIN + layout.num_heads * CELL + 1, MARGIN + layout.num_layers * CELL + 1
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for head in range(0, layout.num_heads, 4):
        draw.text((MARGIN + head * CELL + 2, 8), f"H{head}", fill="black")
    for layer in range(layout.num_layers):
        y = MARGIN + layer * CELL
        if layer % 4 == 0:
            draw.text((2, y + 2), f"L{layer}", fill="black")
        single = layout.model_type == "flux" and layer >= layout.num_double_layers
        for head in range(layout.num_heads):
            x = MARGIN + head * CELL
            fill = (255, 140, 0) if (layer, head) in chosen else ((205, 210, 222) if single else (232, 236, 244))
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=fill, outline=(160, 170, 190))
    return image


def head_at(layout: HeadLayout, x: float, y: float) -> tuple[int, int] | None:
    """The (layer, head) under pixel (x, y) of :func:`grid_image`, or None outside the cells."""
    head, layer = int((x - MARGIN) // CELL), int((y - MARGIN) // CELL)
    if x < MARGIN or y < MARGIN or not (0 <= layer < layout.num_layers and 0 <= head < layout.num_heads):
        return None
    return layer, head
