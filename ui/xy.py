"""The XY comparison: head sets (rows) × one varied setting (columns), drawn as one labelled grid image."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["AXES", "LABEL_HEIGHT", "LABEL_WIDTH", "cell_size", "compose_grid", "parse_axis_values"]

# column axis name -> the Settings field it varies
AXES = {"PAG scale": "pag_scale", "Softness": "softness", "Seed": "seed"}
LABEL_WIDTH, LABEL_HEIGHT = 180, 28
MAX_CELLS = 8


def parse_axis_values(axis: str, text: str) -> list:
    """The column values typed for ``axis`` (comma-separated): ValueError for anything else."""
    if axis not in AXES:
        raise ValueError(f"X axis: choose {', '.join(AXES)}")
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise ValueError("X values: give at least one value, e.g. 1,3,5")
    if len(parts) > MAX_CELLS:
        raise ValueError(f"X values: at most {MAX_CELLS}")
    try:
        values = [int(p) if axis == "Seed" else float(p) for p in parts]
    except ValueError:
        raise ValueError(f"X values: {'whole numbers' if axis == 'Seed' else 'numbers'} joined by commas") from None
    if axis == "Softness" and not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError("X values: softness must be in [0, 1]")
    if any(v < 0 for v in values):
        raise ValueError("X values: 0 or more")
    return values


def cell_size(image_size: int) -> int:
    """Small images are enlarged pixel-exactly (so a 32 px model is readable); large ones are shown at most 512 px."""
    if image_size < 128:
        return image_size * -(-128 // image_size)
    return min(image_size, 512)


def compose_grid(images: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str]) -> Image.Image:
    """``images[row][column]`` in one image with the row labels on the left and the column labels on top."""
    rows, columns = len(images), len(images[0])
    side = images[0][0].width
    cell = cell_size(side)
    grid = Image.new("RGB", (LABEL_WIDTH + columns * cell, LABEL_HEIGHT + rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for c, label in enumerate(column_labels):
        draw.text((LABEL_WIDTH + c * cell + 4, 7), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        for i, line in enumerate(_wrap(label, 24)[:6]):
            draw.text((4, LABEL_HEIGHT + r * cell + 4 + 15 * i), line, fill="black", font=font)
        for c, image in enumerate(images[r]):
            resample = Image.NEAREST if cell % side == 0 else Image.LANCZOS
            tile = image.convert("RGB").resize((cell, cell), resample) if cell != side else image.convert("RGB")
            grid.paste(tile, (LABEL_WIDTH + c * cell, LABEL_HEIGHT + r * cell))
    return grid


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for part in text.replace(",", ", ").split():
        if line and len(line) + 1 + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} {part}".strip()
    return [*lines, line] if line else lines or [""]
