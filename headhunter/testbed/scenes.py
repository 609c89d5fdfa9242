"""The toy-scenes world: two objects in a spatial relation, for a toy model whose unguided samples can fail the way
real models fail — attribute binding (the red circle and the blue square swap colours) and composition (the relation
is wrong). Prompts from a fixed grammar, images rendered procedurally (Pillow, seeded).

Grammar::

    a {color} {shape} {left of|right of|above|below} a {color} {shape} on a {color} background[, {style}]

The two objects' colours differ from each other and from the background; the shapes may repeat. Colours, shapes and
styles are toy-shapes' (:mod:`.data`), so the two worlds read colours the same way.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .data import COLORS, SHAPES, STYLES, apply_style, draw_shape, held_out_split

__all__ = ["RELATIONS", "TwoObjectScene", "all_two_object_scenes", "held_out_two_object_scenes",
           "parse_scene_prompt", "render_scene", "training_two_object_scenes"]

#: Relation → (dx, dy) from the first object's centre to the second's, as fractions of the image side
RELATIONS: dict[str, tuple[float, float]] = {
    "left of": (0.44, 0.0),  # the first object is left of the second: the second lies to its right
    "right of": (-0.44, 0.0),
    "above": (0.0, 0.44),
    "below": (0.0, -0.44),
}
_RELATION = "|".join(RELATIONS)
_STYLE = "|".join(STYLES)
_PROMPT = re.compile(
    rf"^a (?P<c1>\w+) (?P<s1>\w+) (?P<relation>{_RELATION}) a (?P<c2>\w+) (?P<s2>\w+) on a (?P<bg>\w+) background"
    rf"(?:, (?P<style>{_STYLE}))?$"
)


@dataclass(frozen=True)
class TwoObjectScene:
    color1: str
    shape1: str
    relation: str
    color2: str
    shape2: str
    background: str
    style: str | None = None

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.color1, COLORS, "colour"), (self.color2, COLORS, "colour"),
                                     (self.background, COLORS, "colour"), (self.shape1, SHAPES, "shape"),
                                     (self.shape2, SHAPES, "shape"), (self.relation, RELATIONS, "relation")):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if len({self.color1, self.color2, self.background}) != 3:
            raise ValueError("the two objects' colours and the background colour must all differ")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; choose one of {', '.join(STYLES)}")

    @property
    def prompt(self) -> str:
        text = (f"a {self.color1} {self.shape1} {self.relation} a {self.color2} {self.shape2} on a {self.background} "
                "background")
        return text if self.style is None else f"{text}, {self.style}"


def parse_scene_prompt(prompt: str) -> TwoObjectScene:
    """The scene a grammar prompt describes; ValueError for any other text."""
    match = _PROMPT.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"{prompt!r} is not a toy-scenes prompt: 'a red circle left of a blue square on a white "
                         "background[, faded]'")
    return TwoObjectScene(match["c1"], match["s1"], match["relation"], match["c2"], match["s2"], match["bg"],
                          match["style"])


def all_two_object_scenes(styles: bool = True) -> list[TwoObjectScene]:
    """Every scene of the grammar: 6 × 5 × 4 colour triples × 9 shape pairs × 4 relations (4,320), times 5 style
    choices."""
    style_choices = (None, *STYLES) if styles else (None,)
    return [TwoObjectScene(c1, s1, relation, c2, s2, bg, style)
            for c1 in COLORS for c2 in COLORS for bg in COLORS if len({c1, c2, bg}) == 3
            for s1 in SHAPES for s2 in SHAPES for relation in RELATIONS for style in style_choices]


def render_scene(scene: TwoObjectScene | str, size: int = 32, seed: int = 0) -> Image.Image:
    """The image of ``scene`` (or of its prompt): the background, the two objects (each ~30 % of the side, their
    centres 0.44 of the side apart along the relation's axis, the pair placed and each object sized with a little
    seeded jitter), then the style."""
    scene = parse_scene_prompt(scene) if isinstance(scene, str) else scene
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    dx, dy = RELATIONS[scene.relation]
    # the pair's midpoint, jittered across the relation's axis more than along it
    mx = 0.5 + rng.uniform(-0.03, 0.03) + (rng.uniform(-0.12, 0.12) if dx == 0 else 0.0)
    my = 0.5 + rng.uniform(-0.03, 0.03) + (rng.uniform(-0.12, 0.12) if dy == 0 else 0.0)
    for (shape, color), sign in (((scene.shape1, scene.color1), -0.5), ((scene.shape2, scene.color2), 0.5)):
        side = size * rng.uniform(0.27, 0.32)
        draw_shape(draw, shape, (mx + sign * dx) * size, (my + sign * dy) * size, side, COLORS[color])
    return Image.fromarray(apply_style(np.asarray(image), scene.style))


def held_out_two_object_scenes(count: int = 400) -> list[TwoObjectScene]:
    """The scenes kept out of training (a fixed, seeded draw over all scenes): the testbed measures on these."""
    return held_out_split(all_two_object_scenes(), count, 20261203)[0]


def training_two_object_scenes() -> list[TwoObjectScene]:
    """Every scene but the :func:`held_out_two_object_scenes`."""
    return held_out_split(all_two_object_scenes(), 400, 20261203)[1]
