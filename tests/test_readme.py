"""The README's Python examples, run as written except that from_pretrained returns a tiny random-weight pipeline with
the real model's head layout, "cuda" becomes "cpu", offloading is a no-op, 512 px becomes 32 px and every call takes
2 steps."""

import re
from pathlib import Path

import pytest

from headhunter.pipelines import HeadHunterChromaPipeline, HeadHunterFluxPipeline, HeadHunterSD3Pipeline
from headhunter.testing import build_pipeline, tiny_components

README = Path(__file__).parents[1] / "README.md"


def readme_examples():
    blocks = re.findall(r"```python\n(# readme-example: (\w+)\n.*?)```", README.read_text(), re.S)
    return {name: code for code, name in blocks}


def test_readme_has_its_examples():
    assert set(readme_examples()) == {"sd3", "flux", "chroma"}


@pytest.mark.parametrize("name", ["sd3", "flux", "chroma"])
def test_readme_example_runs(name, monkeypatch, tmp_path):
    code = readme_examples()[name]
    requested = []
    if name == "sd3":
        cls, expected_id = HeadHunterSD3Pipeline, "stabilityai/stable-diffusion-3-medium-diffusers"
        components = tiny_components("tiny-sd3", num_layers=24, num_heads=24)
    elif name == "flux":
        cls, expected_id = HeadHunterFluxPipeline, "black-forest-labs/FLUX.1-dev"
        components = tiny_components("tiny-flux", num_layers=19, num_single_layers=38, num_heads=24)
    else:
        cls, expected_id = HeadHunterChromaPipeline, "lodestones/Chroma1-HD"
        components = tiny_components("tiny-chroma", num_layers=19, num_single_layers=38, num_heads=24)

    def fake_from_pretrained(model_id, **kwargs):
        requested.append(model_id)
        return build_pipeline(cls, components)

    monkeypatch.setattr(cls, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(cls, "enable_model_cpu_offload", lambda self, *a, **k: None)
    code = code.replace('"cuda"', '"cpu"').replace("height=512", "height=32").replace("width=512", "width=32")
    code = re.sub(r"num_inference_steps=\d+", "num_inference_steps=2", code)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, f"README:{name}", "exec"), namespace)
    assert requested == [expected_id]
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1
    if name == "sd3":
        assert len(namespace["images"]) == 2
