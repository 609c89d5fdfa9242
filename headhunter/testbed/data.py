"""The toy-shapes world: prompts from a fixed grammar and the images they describe, rendered procedurally (Pillow,
seeded), for a small text-to-image model that can be trained and measured offline.

Grammar::

    a {color} {shape} on a {color} background, {position}[, {style}]

with foreground and background colours different. Styles are global colour transforms applied after drawing.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLORS", "POSITIONS", "SHAPES", "STYLES", "Scene", "all_scenes", "apply_style", "draw_shape",
           "held_out_scenes", "held_out_split", "parse_prompt", "render", "styled_palette", "training_scenes"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
#: Position → centre of the shape as fractions of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
STYLES = ("warm light", "cool light", "high contrast", "faded")

_PROMPT = re.compile(
    r"^a (?P<fg>\w+) (?P<shape>\w+) on a (?P<bg>\w+) background, (?P<position>top left|top right|bottom left|"
    r"bottom right|center)(?:, (?P<style>warm light|cool light|high contrast|faded))?$"
)


@dataclass(frozen=True)
class Scene:
    foreground: str
    shape: str
    background: str
    position: str
    style: str | None = None

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.foreground, COLORS, "colour"), (self.background, COLORS, "colour"),
                                     (self.shape, SHAPES, "shape"), (self.position, POSITIONS, "position")):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if self.foreground == self.background:
            raise ValueError("the foreground and background colours must differ")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; choose one of {', '.join(STYLES)}")

    @property
    def prompt(self) -> str:
        text = f"a {self.foreground} {self.shape} on a {self.background} background, {self.position}"
        return text if self.style is None else f"{text}, {self.style}"


def parse_prompt(prompt: str) -> Scene:
    """The scene a grammar prompt describes; ValueError for any other text."""
    match = _PROMPT.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"{prompt!r} is not a toy-shapes prompt: 'a red circle on a blue background, top left[, faded]'")
    return Scene(match["fg"], match["shape"], match["bg"], match["position"], match["style"])


def all_scenes(styles: bool = True) -> list[Scene]:
    """Every scene of the grammar (6 × 5 colour pairs × 3 shapes × 5 positions, times 5 style choices)."""
    style_choices = (None, *STYLES) if styles else (None,)
    return [Scene(fg, shape, bg, position, style) for fg in COLORS for bg in COLORS if bg != fg for shape in SHAPES
            for position in POSITIONS for style in style_choices]


def apply_style(pixels: np.ndarray, style: str | None) -> np.ndarray:
    """A style's global colour transform of uint8 RGB ``pixels`` (any shape ending in 3)."""
    if style is None:
        return pixels
    x = pixels.astype(np.float32)
    if style == "warm light":
        x = x * np.array([1.0, 0.9, 0.6], dtype=np.float32) + np.array([30, 10, 0], dtype=np.float32)
    elif style == "cool light":
        x = x * np.array([0.6, 0.9, 1.0], dtype=np.float32) + np.array([0, 10, 30], dtype=np.float32)
    elif style == "high contrast":
        x = (x - 128.0) * 1.6 + 128.0
    elif style == "faded":
        x = x * 0.5 + 100.0
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def styled_palette(style: str | None) -> dict[str, np.ndarray]:
    """Each colour as it looks under ``style``."""
    return {name: apply_style(np.array(rgb, dtype=np.uint8), style).astype(np.float32) for name, rgb in COLORS.items()}


def render(scene: Scene | str, size: int = 32, seed: int = 0) -> Image.Image:
    """The image of ``scene`` (or of its prompt): background, the shape (side ~40 % of the image, jittered a little by
    ``seed``) centred at its position, then the style."""
    scene = parse_prompt(scene) if isinstance(scene, str) else scene
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    side = size * rng.uniform(0.36, 0.42)
    cx = cx * size + rng.uniform(-0.03, 0.03) * size
    cy = cy * size + rng.uniform(-0.03, 0.03) * size
    draw_shape(draw, scene.shape, cx, cy, side, COLORS[scene.foreground])
    return Image.fromarray(apply_style(np.asarray(image), scene.style))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float,
               color: tuple[int, int, int]) -> None:
    """``shape`` filling a ``side``-wide box centred at (cx, cy): a circle, a square, or an upright triangle."""
    half = side / 2
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=color)


def held_out_split(scenes: list, count: int, seed: int) -> tuple[list, list]:
    """(held out, training): a fixed, seeded draw of ``count`` of ``scenes``, and the rest in their order."""
    drawn = list(scenes)
    random.Random(seed).shuffle(drawn)
    held = set(drawn[:count])
    return drawn[:count], [scene for scene in scenes if scene not in held]


def held_out_scenes(count: int = 200) -> list[Scene]:
    """The scenes kept out of training (a fixed, seeded draw over all scenes): the testbed measures on these."""
    return held_out_split(all_scenes(), count, 20261125)[0]


def training_scenes() -> list[Scene]:
    """Every scene but the :func:`held_out_scenes`."""
    return held_out_split(all_scenes(), 200, 20261125)[1]
