"""The XY comparison: head sets (rows) × one varied setting (columns), drawn as one labelled grid image."""

from __future__ import annotations

import csv
from dataclasses import replace
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .settings import Settings

__all__ = ["AXES", "LABEL_HEIGHT", "LABEL_WIDTH", "axis_label", "cell_size", "column_settings", "compose_grid",
           "parse_axis_values"]

# column axis name -> what a value is, as A1111's XY plot names them; "Prompt S/R" replaces its first value in the
# prompt by each value, "Interval" is start-end
AXES = {"PAG scale": float, "Softness": float, "Seed": int, "Steps": int, "CFG": float, "Prompt S/R": str,
        "Interval": tuple}
_FIELDS = {"PAG scale": "pag_scale", "Softness": "softness", "Seed": "seed", "Steps": "steps", "CFG": "cfg"}
LABEL_WIDTH, LABEL_HEIGHT = 180, 28
MAX_CELLS = 8


def parse_axis_values(axis: str, text: str) -> list:
    """The column values typed for ``axis`` (comma-separated; a Prompt S/R value with a comma in "quotes"; an
    interval as start-end, e.g. ``0-0.5``): ValueError for anything else."""
    if axis not in AXES:
        raise ValueError(f"X axis: choose {', '.join(AXES)}")
    kind = AXES[axis]
    parts = [p.strip() for p in next(csv.reader([text or ""], skipinitialspace=True), []) if p.strip()]
    if not parts:
        raise ValueError("X values: give at least one value, e.g. 1,3,5")
    if len(parts) > MAX_CELLS:
        raise ValueError(f"X values: at most {MAX_CELLS}")
    if kind is str:
        if len(parts) < 2:
            raise ValueError("X values: the text to search for in the prompt, then what replaces it, e.g. red,blue")
        return parts
    try:
        if kind is tuple:
            values = [tuple(float(x) for x in p.split("-")) for p in parts]
            if not all(len(v) == 2 and 0.0 <= v[0] < v[1] <= 1.0 for v in values):
                raise ValueError
        else:
            values = [kind(p) for p in parts]
    except ValueError:
        what = {int: "whole numbers", float: "numbers", tuple: "intervals start-end inside 0-1, e.g. 0-0.5"}[kind]
        raise ValueError(f"X values: {what} joined by commas") from None
    if axis == "Softness" and not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError("X values: softness must be in [0, 1]")
    if kind is not tuple and any(v < 0 for v in values):
        raise ValueError("X values: 0 or more")
    if axis == "Steps" and any(v < 1 for v in values):
        raise ValueError("X values: steps must be 1 or more")
    return values


def column_settings(settings: Settings, axis: str, values: Sequence[Any], column: int) -> Settings:
    """The settings of one column: ``settings`` with the axis's value of ``column``; ValueError when a Prompt S/R's
    first value is not in the prompt."""
    value = values[column]
    if axis == "Prompt S/R":
        if values[0] not in settings.prompt:
            raise ValueError(f"X values: {values[0]!r} is not in the prompt (Prompt S/R replaces its first value)")
        return replace(settings, prompt=settings.prompt.replace(values[0], value))
    if axis == "Interval":
        return replace(settings, start=value[0], end=value[1])
    return replace(settings, **{_FIELDS[axis]: value})


def axis_label(axis: str, value: Any) -> str:
    """A column's label in the grid."""
    if axis == "Prompt S/R":
        return str(value)
    if axis == "Interval":
        return f"interval {value[0]:g}-{value[1]:g}"
    return f"{axis if axis in ('PAG scale', 'CFG') else axis.lower()} {value:g}"


def cell_size(image_size: int) -> int:
    """The side of a grid cell for images whose longer side is ``image_size``: small images are enlarged
    pixel-exactly (so a 32 px model is readable); large ones are shown at most 512 px."""
    if image_size < 128:
        return image_size * -(-128 // image_size)
    return min(image_size, 512)


def compose_grid(images: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str]) -> Image.Image:
    """``images[row][column]`` in one image with the row labels on the left and the column labels on top."""
    rows, columns = len(images), len(images[0])
    side = max(images[0][0].size)
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
            scale = cell / side  # the longer side fills the cell; a non-square image keeps its aspect
            tile = image.convert("RGB")
            if scale != 1:
                tile = tile.resize((round(image.width * scale), round(image.height * scale)), resample)
            grid.paste(tile, (LABEL_WIDTH + c * cell + (cell - tile.width) // 2,
                              LABEL_HEIGHT + r * cell + (cell - tile.height) // 2))
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
