"""A search's result travels: `headhunter export` writes a folder that loads as a guider and as pag_heads, from the
folder and from the Hub cache (built here, offline), with a model card stating the search; upload is mocked; heads
searched on another layout are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headhunter.cli import main
from headhunter.guiders import HeadHunterGuidance
from headhunter.search import HeadHunter
from headhunter.sharing import load_export, push_export
from headhunter.testing import tiny_pipeline

PROMPTS, SEEDS = ["a parrot", "a lighthouse"], [0, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished search on tiny SD3 (2 steps, greedy, k 2, 1 round), and its export."""
    root = tmp_path_factory.mktemp("share")
    pipe = tiny_pipeline("tiny-sd3")
    HeadHunter(pipe, "colorfulness", PROMPTS, SEEDS, 2, 1, root / "run", num_inference_steps=2, height=32, width=32,
               pag_scale=2.5, pag_softness=0.5, model_name="tiny-sd3", progress=False).run()
    assert main(["export", str(root / "run"), str(root / "out")]) == 0
    return root


def test_the_export_has_the_guider_config_the_provenance_and_a_card_stating_every_field(run):
    out = run / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "guider_config.json", "headhunter.json", "heatmap.png"]
    selected = json.loads((run / "run" / "selected.json").read_text())
    config = json.loads((run / "run" / "config.json").read_text())
    guider = json.loads((out / "guider_config.json").read_text())
    assert guider["_class_name"] == "HeadHunterGuidance"
    assert (guider["heads"], guider["pag_scale"], guider["pag_softness"], guider["pag_target"], guider["pag_scope"],
            guider["start"], guider["stop"], guider["made_for"]) == \
        (selected["heads"], 2.5, 0.5, "identity", "joint", 0.0, 1.0, "sd3:3x4")
    card = (out / "README.md").read_text()
    summary = json.loads((run / "run" / "summary.json").read_text())
    expected = ["tiny-sd3", "colorfulness", "greedy, k = 2, rounds = 1", "a parrot; a lighthouse", "| seeds | 0, 3 |",
                "| num_inference_steps | 2 |", "| height | 32 |", "| width | 32 |", "| pag_scale | 2.5 |",
                f"| diffusers version | {config['environment']['diffusers']} |",
                f"| torch version | {config['environment']['torch']} |", "![heat map](heatmap.png)",
                f"**{selected['heads']}**", f"| images generated | {summary['images_generated']} |"]
    expected += [f"| {row['rank']} | {row['head']} |" for row in summary["rounds"][0]["top"]]
    missing = [text for text in expected if text not in card]
    assert not missing, missing
    provenance = json.loads((out / "headhunter.json").read_text())
    assert provenance["pairs"] == [[p, s] for p in PROMPTS for s in SEEDS] and provenance["family"] == "tiny-sd3"


def _hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """The layout huggingface_hub keeps a downloaded repo in: refs/main names a snapshot holding the files."""
    cache = root / "hub"
    commit = "0" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return cache


LOAD = """
import json, sys, numpy as np, torch
from headhunter.guiders import HeadHunterGuidance
from headhunter.testing import tiny_pipeline
source, selected, result = sys.argv[1], sys.argv[2], sys.argv[3]
guider = HeadHunterGuidance.from_pretrained(source.removeprefix("hf://"))
pipe = tiny_pipeline("tiny-sd3")
def image(heads):
    return pipe("a parrot", generator=torch.Generator().manual_seed(3), pag_heads=heads, pag_scale=2.5,
                pag_softness=0.5, num_inference_steps=2, height=32, width=32, output_type="np").images[0]
json.dump({"heads": str(guider.heads), "scale": guider.pag_scale, "softness": guider.pag_softness,
           "same": bool(np.array_equal(image(source), image(selected))),
           "differs_from_none": not np.array_equal(image(source), image(""))}, open(result, "w"))
"""


@pytest.mark.parametrize("where", ["folder", "hub cache"])
def test_the_export_loads_in_a_fresh_process_as_the_runs_selected_heads(run, tmp_path, where):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    source = str(run / "out")
    if where == "hub cache":
        env["HF_HUB_CACHE"] = str(_hub_cache(tmp_path, "someone/tiny-heads", run / "out"))
        source = "hf://someone/tiny-heads"
    subprocess.run([sys.executable, "-c", LOAD, source, str(run / "run" / "selected.json"), str(tmp_path / "r.json")],
                   check=True, env=env, timeout=300)
    result = json.loads((tmp_path / "r.json").read_text())
    selected = json.loads((run / "run" / "selected.json").read_text())
    assert (result["heads"], result["scale"], result["softness"]) == (selected["heads"], 2.5, 0.5)
    assert result["same"] and result["differs_from_none"]


def test_an_uncached_hub_id_offline_is_a_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not in the hub cache"):
        load_export("hf://nobody/nothing")


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))


def test_push_to_hub_uploads_the_folder_and_nothing_leaves_the_machine(run, monkeypatch, tmp_path):
    api = FakeApi()
    assert push_export(run / "out", "someone/tiny-heads", private=True, api=api) == "https://huggingface.co/someone/tiny-heads"
    assert api.calls == [("create_repo", "someone/tiny-heads", {"private": True, "exist_ok": True, "repo_type": "model"}),
                         ("upload_folder", "someone/tiny-heads",
                          ["README.md", "guider_config.json", "headhunter.json", "heatmap.png"])]
    import huggingface_hub

    cli_api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: cli_api)
    assert main(["export", str(run / "run"), str(tmp_path / "again"), "--push-to-hub", "me/heads"]) == 0
    assert [call[:2] for call in cli_api.calls] == [("create_repo", "me/heads"), ("upload_folder", "me/heads")]
    with pytest.raises(ValueError, match="not a headhunter export"):
        push_export(tmp_path, "me/heads", api=FakeApi())


def test_heads_searched_on_another_layout_are_refused_unless_passed_as_heads(run):
    flux = tiny_pipeline("tiny-flux")
    call = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    with pytest.raises(ValueError, match=r"searched on a sd3:3x4 transformer .* this one is flux:"):
        flux("a parrot", pag_heads=str(run / "out"), **call)
    heads = load_export(run / "out")["heads"]  # the heads themselves: used as asked (they fit FLUX's grid)
    flux("a parrot", pag_heads=heads, **call)
    guider = HeadHunterGuidance.from_pretrained(str(run / "out"))
    with pytest.raises(ValueError, match="searched on a sd3:3x4 transformer"):
        with guider.attached(flux.transformer):
            pass
    with HeadHunterGuidance.from_pretrained(str(run / "out"), made_for=None).attached(flux.transformer):
        pass
    with HeadHunterGuidance.from_pretrained(str(run / "out")).attached(tiny_pipeline("tiny-sd3").transformer):
        pass
    from headhunter.testing import toy_pipeline

    toy = toy_pipeline("toy-shapes")  # also SD3, but 6 layers × 4 heads: the numbers would name other heads
    with pytest.raises(ValueError, match=r"searched on a sd3:3x4 transformer .* this one is sd3:6x4"):
        toy("a red circle on a blue background, top left", pag_heads=str(run / "out"), num_inference_steps=2,
            output_type="np")


def test_export_refuses_an_unfinished_run_and_a_folder_in_use(run, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((run / "run" / "config.json").read_text())
    assert main(["export", str(tmp_path / "half"), str(tmp_path / "o")]) == 2
    assert "has not finished: resume it first" in capsys.readouterr().err
    assert main(["export", str(run / "run"), str(run / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "is not a headhunter search run" in capsys.readouterr().err


def test_the_studio_exports_a_chosen_run_as_a_zip_of_the_same_folder(tmp_path):
    gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")
    import zipfile

    from headhunter.ui import Settings, Studio

    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path / "workspace")
    with pytest.raises(gr.Error, match="Export: choose a run in the list first"):
        studio.export_chosen("")
    list(studio.search("colorfulness", "", "a parrot", "0", 1, 1, Settings("x", steps=2, width=32, height=32),
                       run_name="shared"))
    with zipfile.ZipFile(studio.export_chosen("shared")) as archive:
        archive.extractall(tmp_path / "unzipped")
    loaded = load_export(tmp_path / "unzipped" / "shared")
    selected = json.loads((tmp_path / "workspace" / "shared" / "selected.json").read_text())
    assert str(loaded["heads"]) == selected["heads"] and loaded["objective"] == "colorfulness"
    assert HeadHunterGuidance.from_pretrained(str(tmp_path / "unzipped" / "shared")).heads == loaded["heads"]
