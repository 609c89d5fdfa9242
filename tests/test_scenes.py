"""The toy-scenes world (issue 23, first step): its grammar, its renders and the weight-free ``scenes`` objective,
which is right on every component of clean renders and wrong, component by component, on renders that break the
prompt in a known way."""

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from headhunter.scorers import load_scorer
from headhunter.scorers.scenes import COMPONENTS, scene_components
from headhunter.testbed.data import COLORS, STYLES, apply_style
from headhunter.testbed.scenes import (RELATIONS, TwoObjectScene, all_two_object_scenes, held_out_two_object_scenes,
                                       parse_scene_prompt, render_scene, training_two_object_scenes)


def test_the_grammar():
    scenes = all_two_object_scenes()
    # 6 first colours × 5 second × 4 backgrounds, 3 × 3 shapes, 4 relations, no style or one of 4
    assert len(scenes) == 6 * 5 * 4 * 9 * 4 * 5 == len(set(scenes))
    scene = TwoObjectScene("red", "circle", "left of", "blue", "square", "white", "faded")
    assert scene.prompt == "a red circle left of a blue square on a white background, faded"
    assert parse_scene_prompt(scene.prompt) == scene
    assert parse_scene_prompt("A Red Circle Above a blue triangle on a black background") == TwoObjectScene(
        "red", "circle", "above", "blue", "triangle", "black")
    for bad in ("a red circle on a blue background, top left", "a red circle left of a red square on a blue background",
                "a red circle left of a blue square on a red background", "a red hexagon left of a blue square on a "
                "white background"):
        with pytest.raises(ValueError):
            parse_scene_prompt(bad)
    held, training = held_out_two_object_scenes(), training_two_object_scenes()
    assert len(held) == 400 and not set(held) & set(training) and len(held) + len(training) == len(scenes)


def test_the_objective_is_right_on_every_component_of_clean_renders():
    scenes = all_two_object_scenes()
    rng = random.Random(0)
    sample = [(rng.choice(scenes), rng.randrange(10**6)) for _ in range(600)]
    assert {s.relation for s, _ in sample} == set(RELATIONS) and {s.style for s, _ in sample} == {None, *STYLES}
    for size in (32, 64):
        for scene, seed in sample[: 600 if size == 32 else 150]:
            values = scene_components(np.asarray(render_scene(scene, size, seed)), scene.prompt)
            assert values == {**{c: 1.0 for c in COMPONENTS}, "adherence": 1.0}, (scene.prompt, seed, size, values)
    images = torch.stack([torch.from_numpy(np.array(render_scene(s, 32, seed))).permute(2, 0, 1) / 255
                          for s, seed in sample[:16]])
    prompts = [s.prompt for s, _ in sample[:16]]
    assert load_scorer("scenes")(images, prompts).tolist() == [1.0] * 16
    assert load_scorer("scenes-adherence")(images, prompts).tolist() == [1.0] * 16


def _scored(drawn: TwoObjectScene, asked: TwoObjectScene, seed: int = 3) -> dict:
    return scene_components(np.asarray(render_scene(drawn, 32, seed)), asked.prompt)


def test_the_objective_sees_each_kind_of_mistake():
    asked = TwoObjectScene("red", "circle", "left of", "blue", "square", "white")
    # the relation reversed: everything else right
    wrong = _scored(TwoObjectScene("red", "circle", "right of", "blue", "square", "white"), asked)
    assert wrong == {**{c: 1.0 for c in COMPONENTS}, "relation": 0.0, "adherence": 0.0}
    # colours swapped between the objects (a blue circle left of a red square): objects are matched by colour first,
    # so the shapes and the relation come out wrong
    wrong = _scored(TwoObjectScene("blue", "circle", "left of", "red", "square", "white"), asked)
    assert wrong == {"background": 1.0, "style": 1.0, "color1": 1.0, "color2": 1.0, "shape1": 0.0, "shape2": 0.0,
                     "relation": 0.0, "adherence": 0.0}
    # one colour wrong (green for blue), the relation still right
    wrong = _scored(TwoObjectScene("red", "circle", "left of", "green", "square", "white"), asked)
    assert wrong["color2"] == 0.0 and wrong["relation"] == 1.0 and wrong["adherence"] == 0.0
    assert wrong["color1"] == wrong["shape1"] == wrong["shape2"] == 1.0
    # a shape wrong: adherence (colours and relation) still holds
    wrong = _scored(TwoObjectScene("red", "triangle", "left of", "blue", "square", "white"), asked)
    assert wrong["shape1"] == 0.0 and wrong["adherence"] == 1.0
    # background and style
    assert _scored(TwoObjectScene("red", "circle", "left of", "blue", "square", "black"), asked)["background"] == 0.0
    styled = TwoObjectScene("red", "circle", "left of", "blue", "square", "white", "warm light")
    assert _scored(styled, asked)["style"] == 0.0 and _scored(asked, styled)["style"] == 0.0


def test_one_object_or_none_scores_what_is_there():
    asked = TwoObjectScene("red", "circle", "left of", "blue", "square", "white")
    image = Image.new("RGB", (32, 32), COLORS["white"])
    ImageDraw.Draw(image).rectangle([18, 10, 27, 19], fill=COLORS["blue"])  # only the blue square
    values = scene_components(np.asarray(image), asked.prompt)
    assert values == {"background": 1.0, "style": 1.0, "color1": 0.0, "shape1": 0.0, "color2": 1.0, "shape2": 1.0,
                      "relation": 0.0, "adherence": 0.0}
    blank = apply_style(np.full((32, 32, 3), COLORS["white"], dtype=np.uint8), None)
    assert scene_components(blank, asked.prompt) == {"background": 1.0, "style": 1.0, **{c: 0.0 for c in COMPONENTS[1:6]},
                                                     "adherence": 0.0}


@pytest.mark.slow
def test_the_objective_is_right_on_every_scene_of_the_grammar():
    for i, scene in enumerate(all_two_object_scenes()):
        values = scene_components(np.asarray(render_scene(scene, 32, i)), scene.prompt)
        assert min(values.values()) == 1.0, (scene.prompt, i, values)
