"""Wan 2.x as an image model (one frame) and for short videos, through ``HeadHunterModularPipeline`` and the command
line, on a tiny Wan 2.1 text-to-video pipeline of the real blocks (UMT5 text encoder, Wan VAE and transformer).

References: diffusers' own ``WanBlocks`` pipeline with its ``ClassifierFreeGuidance`` or a bare ``HeadHunterGuidance``
(full text step), and the colorfulness scorer applied to each saved frame by hand."""

import inspect
import json
import logging

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

import headhunter
from headhunter.guiders import HeadHunterGuidance
from headhunter.testing import tiny_modular_pipeline

logging.getLogger("diffusers").setLevel(logging.ERROR)
CALL = dict(num_inference_steps=2, height=32, width=32, max_sequence_length=16)


@pytest.fixture(scope="module")
def wan():
    return tiny_modular_pipeline("wan")


def _diffusers_frames(pipe, guider, prompt, seed, num_frames=1):
    """diffusers' own WanBlocks pipeline (its text step included), frames as [F, H, W, 3] floats."""
    pipe.modular.update_components(guider=guider)
    return pipe.modular(prompt=prompt, generator=torch.Generator().manual_seed(seed), num_frames=num_frames,
                        output="videos", output_type="np", **CALL)[0]


@pytest.mark.parametrize("heads", ["", "L1H0,L2"])
def test_one_frame_equals_diffusers_wan_blocks_with_cfg(wan, heads):
    """CFG on by default (5, as Wan is used); the wrapper encodes the prompts itself and runs the blocks after the text
    step: equal to diffusers' whole pipeline with the same guidance."""
    out = wan(["a red fox", "a boat on a lake"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
              pag_heads=heads or None, pag_scale=2.0, output_type="pt", **CALL)
    assert out.images.shape == (2, 3, 32, 32) and out.frames.shape == (2, 1, 3, 32, 32)
    for row, (prompt, seed) in enumerate((("a red fox", 1), ("a boat on a lake", 2))):
        guider = (HeadHunterGuidance(heads=heads, pag_scale=2.0, guidance_scale=5.0) if heads
                  else ClassifierFreeGuidance(guidance_scale=5.0))
        expected = torch.from_numpy(_diffusers_frames(wan, guider, prompt, seed)).permute(0, 3, 1, 2)
        assert (out.frames[row] - expected).abs().max() <= 1e-5
    assert headhunter.installed(wan.transformer) == []


def test_cfg_off_and_no_heads_works_although_diffusers_text_step_fails(wan):
    """diffusers 0.42's WanTextEncoderStep leaves negative_prompt_embeds unbound when the guider needs a single
    prediction; the wrapper always provides both embeddings. (When this canary fails, diffusers fixed the step and the
    workaround in pipelines/modular.py can go.)"""
    with pytest.raises(UnboundLocalError):
        _diffusers_frames(wan, HeadHunterGuidance(heads="", guidance_scale=1.0), "a fox", 0)
    image = wan("a fox", generator=torch.Generator().manual_seed(0), guidance_scale=1.0, **CALL).images[0]
    assert image.size == (32, 32)


def test_a_short_video_equals_diffusers_frame_for_frame(wan):
    out = wan("a red fox", generator=torch.Generator().manual_seed(3), pag_heads="L1H1", pag_scale=2.0, num_frames=3,
              output_type="pt", **CALL)
    expected = _diffusers_frames(wan, HeadHunterGuidance(heads="L1H1", pag_scale=2.0, guidance_scale=5.0),
                                 "a red fox", 3, num_frames=3)
    assert out.frames.shape == (1, 3, 3, 32, 32)
    assert (out.frames[0] - torch.from_numpy(expected).permute(0, 3, 1, 2)).abs().max() <= 1e-5
    assert torch.equal(out.images[0], out.frames[0, 0])


def _wan_folder(tmp_path):
    """A saved diffusers WanPipeline folder with the tiny components, as a hub download looks."""
    import diffusers

    modular = tiny_modular_pipeline("wan").modular
    names = [n for n in inspect.signature(diffusers.WanPipeline.__init__).parameters if n != "self"]
    parts = {n: getattr(modular, n, None) for n in names if n in ("tokenizer", "text_encoder", "vae", "scheduler",
                                                                  "transformer")}
    folder = tmp_path / "wan"
    diffusers.WanPipeline(**parts, transformer_2=None).save_pretrained(folder)
    return folder


def test_the_command_line_generates_searches_and_evaluates_one_frame(tmp_path, capsys):
    from headhunter.cli import main
    from headhunter.metadata import read_settings

    for model in ("tiny-wan", str(_wan_folder(tmp_path))):
        out = tmp_path / f"images-{model.replace('/', '_')}"
        assert main(["generate", "--model", model, "--prompt", "a red fox", "--heads", "L1H0", "--seed", "0,1",
                     "--out", str(out), "--steps", "2", "--size", "32"]) == 0
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 2 and read_settings(pngs[0])["pag_heads"] == "L1H0"
        assert read_settings(pngs[0])["guidance_scale"] == 5.0  # CFG on by default, as Wan is used
    run = tmp_path / "run"
    assert main(["search", "--model", "tiny-wan", "--objective", "colorfulness", "--prompt", "a parrot",
                 "--seeds", "0", "--top-k", "1", "--rounds", "1", "--run-dir", str(run)]) == 0
    assert "selected heads: L" in capsys.readouterr().out
    assert json.loads((run / "selected.json").read_text())["family"] == "tiny-wan"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na boat\n")
    assert main(["eval", "--model", "tiny-wan", "--prompts", str(prompts), "--seeds", "0",
                 "--setting", "plain: pag_scale=0", "--setting", "heads: heads=L1H0, pag_scale=3",
                 "--metrics", "colorfulness", "--baseline", "plain", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "summary.csv").is_file()


def test_frames_on_an_image_model_are_refused(tmp_path, capsys):
    from headhunter.cli import main

    assert main(["generate", "--model", "tiny-qwenimage", "--prompt", "a fox", "--frames", "5",
                 "--out", str(tmp_path)]) == 2
    assert "only video models (Wan)" in capsys.readouterr().err


def test_a_short_video_through_generate_and_eval_with_per_frame_scores_and_the_animation_in_the_report(tmp_path):
    from PIL import Image

    from headhunter.cli import main
    from headhunter.metadata import read_settings
    from headhunter.scorers import load_scorer

    out = tmp_path / "clips"
    assert main(["generate", "--model", "tiny-wan", "--prompt", "a red fox", "--heads", "L1H0", "--frames", "3",
                 "--out", str(out), "--steps", "2", "--size", "32"]) == 0
    frames = sorted((out / "a-red-fox-s0-hh").glob("frame-*.png"))
    assert len(frames) == 3 and read_settings(frames[2])["frame"] == 2 and read_settings(frames[0])["num_frames"] == 3
    with Image.open(out / "a-red-fox-s0-hh.webp") as animation:
        assert animation.n_frames == 3
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    eval_dir = tmp_path / "eval"
    assert main(["eval", "--model", "tiny-wan", "--prompts", str(prompts), "--seeds", "0,1",
                 "--setting", "clip: frames=3, heads=L1H0", "--metrics", "colorfulness", "--out", str(eval_dir)]) == 0
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    scores = {r["image_fingerprint"]: r["value"] for r in rows if r["kind"] == "score"}
    images = [r for r in rows if r["kind"] == "image"]
    scorer = load_scorer("colorfulness")
    report = (eval_dir / "report.html").read_text()
    for record in images:
        folder = (eval_dir / record["image"]).with_suffix("")
        per_frame = scorer([Image.open(p).convert("RGB") for p in sorted(folder.glob("frame-*.png"))], ["a red fox"] * 3)
        assert scores[record["fingerprint"]] == pytest.approx(float(np.mean([float(v) for v in per_frame])), rel=1e-6)
        video = record["image"].replace(".png", ".webp")
        assert (eval_dir / video).is_file() and f'<img src="{video}"' in report
    assert "video" in (eval_dir / "results.csv").read_text().splitlines()[0].split(",")
