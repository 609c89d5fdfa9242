"""The toy-shapes grammar and renderer, and the ``shapes`` objective read against rendered ground truth."""

import numpy as np
import pytest
import torch

from headhunter.scorers import load_scorer
from headhunter.scorers.shapes import analyse
from headhunter.testbed import COLORS, POSITIONS, SHAPES, STYLES, Scene, all_scenes, parse_prompt, render


def test_the_grammar_round_trips_and_refuses_other_text():
    scenes = all_scenes()
    assert len(scenes) == 6 * 5 * 3 * 5 * 5  # colour pairs × shapes × positions × (no style + 4)
    for scene in scenes[::97]:
        assert parse_prompt(scene.prompt) == scene
    assert parse_prompt("a red circle on a blue background, top left").style is None
    for bad in ("a red circle", "a red circle on a red background, center", "a pink circle on a blue background, center",
                "a red star on a blue background, center", "a red circle on a blue background, center, sepia"):
        with pytest.raises(ValueError):
            parse_prompt(bad)


def test_renders_are_seeded_and_draw_what_the_prompt_says():
    prompt = "a yellow square on a black background, bottom right"
    a, b, c = (np.asarray(render(prompt, 32, seed)) for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert tuple(a[0, 0]) == COLORS["black"] and tuple(a[24, 24]) == COLORS["yellow"]  # the square's middle
    assert tuple(a[8, 8]) == COLORS["black"]  # the top left is empty
    faded = np.asarray(render(prompt + ", faded", 32, 0))
    assert tuple(faded[0, 0]) == (108, 108, 108)  # 15 · 0.5 + 100, rounded


@pytest.mark.parametrize("size", [32, 64])
def test_the_scorer_reads_every_clean_render_right(size):
    """Accuracy 100 % on clean renders of every scene of the grammar (every colour pair, shape, position, style)."""
    scenes = all_scenes()
    wrong = []
    for index, scene in enumerate(scenes):
        seen = analyse(np.asarray(render(scene, size, seed=index)), scene.style)
        read = Scene(seen.foreground, seen.shape, seen.background, seen.position, seen.style)
        if read != scene:
            wrong.append((scene.prompt, read.prompt))
    assert not wrong, wrong[:5]


def test_the_score_is_high_for_the_true_prompt_and_lower_for_each_kind_of_mistake():
    scorer = load_scorer("shapes")
    truth = Scene("red", "circle", "blue", "top left", "warm light")
    image = torch.from_numpy(np.asarray(render(truth, 32, 3)).copy()).permute(2, 0, 1)[None].float() / 255
    mistakes = [Scene("green", "circle", "blue", "top left", "warm light"), Scene("red", "circle", "white", "top left", "warm light"),
                Scene("red", "circle", "blue", "bottom right", "warm light"), Scene("red", "triangle", "blue", "top left", "warm light"),
                Scene("red", "circle", "blue", "top left", "cool light")]
    prompts = [truth.prompt] + [m.prompt for m in mistakes]
    scores = scorer(image.expand(len(prompts), -1, -1, -1), prompts)
    assert scores[0] > 0.95 and bool((scores[1:] < scores[0] - 0.1).all()), scores
    parts = {part: load_scorer(f"shapes-{part}")(image, [truth.prompt]).item()
             for part in ("background", "foreground", "position", "shape", "style")}
    assert parts["position"] == 1.0 and parts["style"] == 1.0 and min(parts.values()) > 0.8
    assert load_scorer("shapes-position")(image, [mistakes[2].prompt]).item() == 0.0
    blank = torch.zeros(1, 3, 32, 32)  # nothing drawn: no foreground, position or shape
    assert load_scorer("shapes")(blank, ["a red circle on a black background, center"]).item() < 0.5


def test_the_vocabulary_is_the_issues():
    assert set(COLORS) == {"red", "green", "blue", "yellow", "white", "black"}
    assert SHAPES == ("circle", "square", "triangle")
    assert set(POSITIONS) == {"top left", "top right", "bottom left", "bottom right", "center"}
    assert STYLES == ("warm light", "cool light", "high contrast", "faded")
