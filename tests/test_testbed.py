"""The toy-shapes grammar and renderer, and the ``shapes`` objective read against rendered ground truth."""

from pathlib import Path

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


# --- the toy-shapes model and its training ---------------------------------------------------------------------------
def test_every_grammar_word_is_one_token_and_other_text_still_tokenizes():
    from headhunter.testbed.model import MAX_TOKENS, word_tokenizer

    tokenizer = word_tokenizer()
    for scene in all_scenes()[::7]:
        words = scene.prompt.replace(",", " ,").split()
        assert tokenizer.tokenize(scene.prompt) == [w + "</w>" for w in words]
        assert len(tokenizer(scene.prompt).input_ids) <= MAX_TOKENS
    assert "".join(tokenizer.tokenize("a cat")).replace("</w>", " ").split() == ["a", "cat"]


def _train(work, *extra):
    from headhunter.testbed import train

    train.main(["--work", str(work), "--scenes", "3", "--vae-steps", "2", "--batch", "4", "--save-every", "2",
                "--threads", "1", *extra])


def test_training_resumes_where_it_stopped_and_exports_a_pipeline_diffusers_runs_as_trained(tmp_path):
    """Two steps, then a rerun to four, gives the weights of four steps in one go; the exported folder loads with
    from_pretrained and its stock forward, with SD3's 256 zero text tokens, is the one training optimised (one zero
    token whose logit carries log 256)."""
    import math

    from headhunter.pipelines import HeadHunterSD3Pipeline
    from headhunter.testbed.train import SinkJointProcessor

    _train(tmp_path / "straight", "--steps", "4")
    _train(tmp_path / "resumed", "--steps", "2")
    halfway = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    _train(tmp_path / "resumed", "--steps", "4", "--export", str(tmp_path / "pipe"))
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert halfway["step"] == 2 and straight["step"] == resumed["step"] == 4
    assert torch.equal(straight["generator"], resumed["generator"])  # the same batches, noise and timesteps

    for name in ("transformer", "text_encoder", "text_encoder_2"):
        assert not all(torch.equal(v, halfway[name][k]) for k, v in straight[name].items())  # steps 3 and 4 moved it
        for key, value in straight[name].items():
            assert torch.equal(value, resumed[name][key]), (name, key)
            assert torch.equal(straight["ema"][name][key], resumed["ema"][name][key]), (name, key)

    pipe = HeadHunterSD3Pipeline.from_pretrained(tmp_path / "pipe")  # without T5, as saved
    assert pipe.text_encoder_3 is None and pipe.vae.config.scaling_factor != 1.0
    for name in ("transformer", "text_encoder"):  # the EMA weights were exported
        exported = getattr(pipe, name).state_dict()
        assert all(torch.equal(exported[k], v) for k, v in resumed["ema"][name].items() if v.dtype.is_floating_point)
    prompt = "a red circle on a blue background, center"
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=False,
                                              max_sequence_length=256)
    assert embeds.shape[1] == 16 + 256
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([700.0])
    stock = pipe.transformer(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                             timestep=timestep, return_dict=False)[0]
    pipe.transformer.set_attn_processor(SinkJointProcessor())
    bias = torch.zeros(1, 64 + 17)
    bias[:, -1] = math.log(256)
    trained = pipe.transformer(hidden_states=latents, encoder_hidden_states=embeds[:, :17], pooled_projections=pooled,
                               timestep=timestep, return_dict=False, joint_attention_kwargs={"sink_bias": bias})[0]
    torch.testing.assert_close(trained, stock, atol=1e-5, rtol=1e-5)


def test_the_shipped_model_loads_offline_from_the_package_and_draws_held_out_prompts():
    """The trained weights are package data; on held-out prompts and seeds at the default settings the ``shapes``
    analysis finds the colours and the position (the README's figures are measured the same way on 200 pairs by
    benchmarks/testbed.py)."""
    import time

    from headhunter.testbed.data import held_out_scenes
    from headhunter.testing import TOY_CALL, toy_pipeline, toy_pipeline_path

    assert toy_pipeline_path().is_relative_to(Path(__import__("headhunter").__file__).parent)
    weights = sum(p.stat().st_size for p in toy_pipeline_path().rglob("*") if p.is_file())
    assert weights < 30e6
    start = time.perf_counter()
    pipe = toy_pipeline()
    print(f"toy-shapes loaded in {time.perf_counter() - start:.2f} s")
    scenes = held_out_scenes()[:12]
    start = time.perf_counter()
    images = pipe([s.prompt for s in scenes], generator=[torch.Generator().manual_seed(10_000 + i) for i in range(12)],
                  output_type="np", **TOY_CALL).images
    print(f"{(time.perf_counter() - start) / 12:.3f} s per image at {TOY_CALL['num_inference_steps']} steps (batch 12)")
    assert images.shape == (12, 32, 32, 3)
    right = {part: 0 for part in ("background", "foreground", "position")}
    for image, scene in zip((images * 255).round().astype(np.uint8), scenes):
        seen = analyse(image, scene.style)
        for part in right:
            right[part] += getattr(seen, part) == getattr(scene, part)
    assert min(right.values()) >= 10, right


def test_the_experiments_script_runs_in_its_small_mode(tmp_path):
    """benchmarks/testbed.py --small: every experiment on a few pairs, with its tables and figure written."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "testbed.py"), "--small", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "testbed-small.json").read_text())
    assert set(result) >= {"speed", "methods", "style", "halving", "softness", "scale"}
    assert len(result["methods"]) == 5 and len(result["halving"]) == 5 and len(result["softness"]) == 5
    for row in result["methods"].values():
        assert 0 <= row["shapes"] <= 1 and row["frechet"] >= 0
    # u = 0 perturbs nothing: the images of no guidance (up to batching's last bits)
    assert result["softness"]["0"] == pytest.approx(result["methods"]["no guidance"], abs=1e-3)
    table = (tmp_path / "testbed-small.md").read_text()
    assert "(a) Guidance methods" in table and "(c) Cheaper strategies" in table
    assert __import__("PIL.Image").Image.open(tmp_path / "testbed-small-samples.png").size[1] > 6 * 128
