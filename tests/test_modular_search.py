"""HeadHunter on diffusers' modular pipelines: tiny FLUX.2 Klein base, Qwen-Image and Z-Image pipelines built offline
(text encoders, tokenizers, VAEs and transformers of the real classes), driven through ``HeadHunterModularPipeline``."""

import json
import logging

import numpy as np
import pytest
import torch

from headhunter.guiders import HeadHunterGuidance
from headhunter.search import HeadHunter, SearchCancelled
from headhunter.testing import TINY_MODULAR, TINY_MODULAR_CALL, tiny_modular_pipeline

logging.getLogger("diffusers").setLevel(logging.ERROR)


@pytest.fixture(scope="module", params=TINY_MODULAR)
def modular(request):
    return request.param, tiny_modular_pipeline(request.param)


def test_each_image_is_the_modular_pipeline_with_its_own_heads(modular):
    model_type, pipe = modular
    extra = TINY_MODULAR_CALL[model_type]
    images = pipe(["a red fox", "a red fox"], generator=[torch.Generator().manual_seed(s) for s in (4, 4)],
                  pag_heads=["L0H1", None], pag_scale=2.0, num_inference_steps=2, height=32, width=32,
                  output_type="pt", **extra).images
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1

    def direct(heads):
        pipe.modular.update_components(guider=HeadHunterGuidance(heads=heads, pag_scale=2.0))
        out = pipe.modular(prompt="a red fox", generator=torch.Generator().manual_seed(4), num_inference_steps=2,
                           height=32, width=32, output="images", **extra)
        return torch.from_numpy(np.asarray(out[0].convert("RGB")).copy()).permute(2, 0, 1).float() / 255

    assert torch.equal(images[0], direct("L0H1")) and torch.equal(images[1], direct(""))
    assert not torch.equal(images[0], images[1])  # the head changes the image


def test_a_greedy_search_runs_end_to_end_and_resumes(modular, tmp_path):
    model_type, pipe = modular
    settings = dict(num_inference_steps=2, height=32, width=32, pag_scale=3.0, model_name=f"tiny-{model_type}",
                    progress=False, batch_size=2, extra_call_kwargs=TINY_MODULAR_CALL[model_type] or None)
    prompts, seeds = ["a parrot", "a boat"], [0, 1]
    whole = HeadHunter(pipe, "colorfulness", prompts, seeds, 1, 2, tmp_path / "whole", **settings).run()
    candidates = pipe.head_layout.num_layers * pipe.head_layout.num_heads
    assert len(whole.selected) == 2 and whole.images_generated == (candidates + candidates - 1) * 4

    def stop_after_three():  # asked before each batch and between its steps
        log = tmp_path / "resumed" / "scores.jsonl"
        return log.is_file() and len(log.read_text().splitlines()) >= 6

    with pytest.raises(SearchCancelled):
        HeadHunter(pipe, "colorfulness", prompts, seeds, 1, 2, tmp_path / "resumed", should_stop=stop_after_three,
                   **settings).run()
    logged = (tmp_path / "resumed" / "scores.jsonl").read_text().splitlines()
    assert len(logged) == 6  # three batches of two
    resumed = HeadHunter(pipe, "colorfulness", prompts, seeds, 1, 2, tmp_path / "resumed", **settings).run()
    assert resumed.selected == whole.selected and resumed.images_generated == whole.images_generated
    first = {(r["head"][0], r["head"][1], r["pair"]): r["score"] for r in map(json.loads, logged)}
    again = {(r["head"][0], r["head"][1], r["pair"]): r["score"]
             for r in map(json.loads, (tmp_path / "whole" / "scores.jsonl").read_text().splitlines()) if r["round"] == 0}
    assert all(abs(first[key] - again[key]) < 1e-6 for key in first)  # the scores before the stop were kept as made
    preset = json.loads((tmp_path / "resumed" / "selected.json").read_text())
    assert preset["family"] == f"tiny-{model_type}" and preset["heads"] == str(whole.selected)
    assert HeadHunterGuidance.from_preset(tmp_path / "resumed" / "selected.json").heads == whole.selected


def _standard_folder(model_type, tmp_path, distilled=False):
    """A diffusers pipeline folder (model_index.json) with the tiny components, as a hub download looks."""
    import inspect

    import diffusers

    modular = tiny_modular_pipeline(model_type).modular
    cls = {"qwenimage": diffusers.QwenImagePipeline, "flux2": diffusers.Flux2KleinPipeline,
           "zimage": diffusers.ZImagePipeline}[model_type]
    names = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    components = {name: getattr(modular, name) for name in names if name != "is_distilled"}
    if "is_distilled" in names:
        components["is_distilled"] = distilled
    folder = tmp_path / f"{model_type}{'-distilled' if distilled else ''}"
    cls(**components).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", TINY_MODULAR)
def test_the_command_line_generates_searches_and_evaluates_on_these_models(model_type, tmp_path, capsys):
    from headhunter.cli import main
    from headhunter.metadata import read_settings

    folder = _standard_folder(model_type, tmp_path)  # loaded through diffusers' ModularPipeline.from_pretrained
    for model in (f"tiny-{model_type}", str(folder)):
        out = tmp_path / f"images-{model.replace('/', '_')}"
        assert main(["generate", "--model", model, "--prompt", "a red fox", "--heads", "L0H1", "--seed", "0,1",
                     "--out", str(out), "--steps", "2", "--size", "32"]) == 0
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 2 and read_settings(pngs[0])["pag_heads"] == "L0H1"
    run = tmp_path / "run"
    assert main(["search", "--model", f"tiny-{model_type}", "--objective", "colorfulness", "--prompt", "a parrot",
                 "--seeds", "0", "--top-k", "1", "--rounds", "2", "--run-dir", str(run)]) == 0
    assert "selected heads: L" in capsys.readouterr().out and (run / "selected.json").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na boat\n")
    assert main(["eval", "--model", f"tiny-{model_type}", "--prompts", str(prompts), "--seeds", "0",
                 "--setting", "plain: pag_scale=0", "--setting", "heads: heads=L0H1, pag_scale=3",
                 "--metrics", "colorfulness", "--baseline", "plain", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "summary.csv").is_file()


def test_a_guidance_distilled_model_is_refused_with_the_reason(tmp_path, capsys):
    from headhunter.cli import main

    folder = _standard_folder("flux2", tmp_path, distilled=True)
    assert main(["generate", "--model", str(folder), "--prompt", "a fox", "--out", str(tmp_path / "out")]) == 2
    assert "take no guider (a guidance-distilled model" in capsys.readouterr().err


def test_arguments_the_model_does_not_take_are_refused():
    pipe = tiny_modular_pipeline("flux2")
    with pytest.raises(ValueError, match="does not take negative_prompt"):
        pipe("a fox", negative_prompt="blurry", num_inference_steps=1, height=32, width=32)


def test_a_scope_the_model_does_not_define_is_refused_before_any_image():
    pipe = tiny_modular_pipeline("zimage")
    calls = []
    pipe.modular = type("Spy", (), {"blocks": pipe.modular.blocks, "__call__": lambda self, **kw: calls.append(kw)})()
    with pytest.raises(ValueError, match="not supported on Z-Image's single-stream layers"):
        pipe("a fox", pag_heads="L0H1", pag_scope="image", num_inference_steps=1, height=32, width=32)
    assert calls == []


def test_the_studio_takes_these_models(monkeypatch):
    """``headhunter ui`` launches the studio on them (it refused them before it drove the modular pipelines);
    tests/test_ui_modular.py drives that studio."""
    pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")
    import headhunter.ui
    from headhunter.cli import main

    launched = []
    monkeypatch.setattr(headhunter.ui, "launch", lambda model, **kwargs: launched.append(model))
    assert main(["ui", "--model", "tiny-qwenimage"]) == 0 and launched == ["tiny-qwenimage"]
