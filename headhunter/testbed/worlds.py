"""The toy worlds a toy model is trained on, described once so the trainer and the model know nothing of either:
their words (each one token), the longest prompt, the scenes trained on and held out, the renderer, and the caption
each training image gets."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from . import data, scenes

__all__ = ["WORLDS", "World"]


@dataclass(frozen=True)
class World:
    """One toy world.

    Attributes:
        name: the toy model's name (``toy-shapes``, ``toy-scenes``).
        words: the grammar's words; each is one token of the model's tokenizer.
        max_tokens: the tokenizer's length: the longest prompt's tokens with the start and end marks.
        training: the scenes trained on.
        held_out: the scenes measured on, never trained on.
        render: ``render(scene, size, seed)``, the image of a scene.
        caption: ``caption(scene, rng)``, what one training image is captioned (the full prompt, or one that leaves
            something out).
        seeds_per_scene: renders per training scene.
        objective: the weight-free scorer that reads its images back against their prompts.
        prompts: a few training prompts: the first is the model's default prompt (command line, studio), all of
            them the studio's default search prompts.
    """

    name: str
    words: tuple[str, ...]
    max_tokens: int
    training: Callable[[], list]
    held_out: Callable[[], list]
    render: Callable[[Any, int, int], Image.Image]
    caption: Callable[[Any, random.Random], str]
    seeds_per_scene: int
    objective: str
    prompts: tuple[str, ...]


def _words(*phrases: str) -> tuple[str, ...]:
    return tuple(sorted({word for phrase in phrases for word in phrase.split()}))


SHAPES_WORDS = _words("a on background ,", *data.COLORS, *data.SHAPES, *data.POSITIONS, *data.STYLES)
SCENES_WORDS = _words("a on background ,", *data.COLORS, *data.SHAPES, *scenes.RELATIONS, *data.STYLES)

# toy-scenes captions: a share of training images leave one attribute out, as real captions do, so the model learns
# to fill in what a prompt leaves open (and binding is not handed to it by every caption)
SCENES_DROP = 0.3


def scenes_caption(scene: scenes.TwoObjectScene, rng: random.Random, drop: float = SCENES_DROP) -> str:
    """The prompt of ``scene``, or with probability ``drop`` the prompt without one attribute: the background phrase,
    or the colour of one of the objects."""
    if rng.random() >= drop:
        return scene.prompt
    left_out = rng.choice(("background", "color1", "color2"))
    first = scene.shape1 if left_out == "color1" else f"{scene.color1} {scene.shape1}"
    second = scene.shape2 if left_out == "color2" else f"{scene.color2} {scene.shape2}"
    text = f"a {first} {scene.relation} a {second}"
    if left_out != "background":
        text += f" on a {scene.background} background"
    return text if scene.style is None else f"{text}, {scene.style}"


WORLDS: dict[str, World] = {
    "toy-shapes": World("toy-shapes", SHAPES_WORDS, 16, data.training_scenes, data.held_out_scenes, data.render,
                        lambda scene, rng: scene.prompt, 8, "shapes",
                        ("a red circle on a blue background, top left", "a white square on a green background, center",
                         "a yellow triangle on a black background, bottom right")),
    # the longest: a red circle left of a blue square on a white background, warm light (15 words and ",")
    "toy-scenes": World("toy-scenes", SCENES_WORDS, 18, scenes.training_two_object_scenes,
                        scenes.held_out_two_object_scenes, scenes.render_scene, scenes_caption, 2, "scenes",
                        ("a red circle left of a blue square on a white background",
                         "a yellow triangle above a green circle on a black background",
                         "a white square right of a red triangle on a blue background")),
}
