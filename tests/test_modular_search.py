"""HeadHunter on diffusers' modular pipelines: tiny FLUX.2 Klein base and Qwen-Image pipelines built offline (text
encoders, tokenizers, VAEs and transformers of the real classes), driven through ``HeadHunterModularPipeline``."""

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

    batches = []

    def stop_after_three():
        batches.append(1)
        return len(batches) > 3

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
