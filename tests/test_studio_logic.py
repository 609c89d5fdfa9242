"""The studio's behaviour without a browser: the Heads field and preset menu take head specs and preset names, never a
path (whatever is typed, nothing outside the workspace is read, and the message does not reveal whether a file
exists); presets are offered to their model family; costs are known before an atlas or search; a search honours the
left panel."""

import builtins
import json
import pathlib

import pytest

gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")

from headhunter.heads import save_preset  # noqa: E402
from headhunter.testing import tiny_pipeline  # noqa: E402
from headhunter.ui import Studio  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("confinement")
    workspace = root / "workspace"
    (workspace / "search-a").mkdir(parents=True)
    save_preset(workspace / "search-a" / "selected.json", "L1H0,L2H2", model="tiny-sd3")
    outside = root / "outside.json"  # a valid preset file, but not the studio's
    save_preset(outside, "L0H1", model="tiny-sd3")
    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", workspace)
    studio.outside = outside
    return studio


def test_specs_shipped_and_workspace_presets_are_accepted(studio):
    assert str(studio.parse_heads("L1H0, l2h1@0.5")) == "L1H0,L2H1@0.5"
    assert "run:search-a" in studio.preset_names()
    assert str(studio.parse_heads("run:search-a")) == "L1H0,L2H2"
    assert studio.apply_preset("run:search-a")[0] == "L1H0,L2H2"


def _attempts(studio):
    existing, missing = str(studio.outside), str(studio.outside.with_name("missing.json"))
    workspace_file = str(studio.workspace / "search-a" / "selected.json")  # a path, even to the studio's own file
    return [existing, missing, workspace_file, "/etc/passwd", "/etc/hostname", "../outside.json", "~/x.json",
            "run:../outside", "run:search-a/../../outside", "run:/etc/passwd", "selected.json", "file:///etc/passwd"]


def test_paths_and_traversal_are_refused_without_touching_the_filesystem(studio, monkeypatch):
    opened = []
    real_open, real_read = builtins.open, pathlib.Path.read_text
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    monkeypatch.setattr(pathlib.Path, "read_text", lambda p, *a, **k: (opened.append(str(p)), real_read(p, *a, **k))[1])
    for text in _attempts(studio):
        for action in (studio.parse_heads, studio.apply_preset):
            opened.clear()
            with pytest.raises(gr.Error) as err:
                action(text)
            # one message whatever the path: the input echoed, nothing about the file
            message = str(err.value.message if hasattr(err.value, "message") else err.value).replace(repr(text), "X")
            assert message.endswith("X is neither a head spec (like L13H17) nor one of the presets offered here"), message
            assert not [p for p in opened if str(studio.workspace) not in p and "presets" not in p], opened
        assert studio.grid(text) is not None  # the grid stays empty, no error, no read


def test_the_same_message_for_an_existing_and_a_missing_file(studio):
    existing, missing = str(studio.outside), str(studio.outside.with_name("missing.json"))
    messages = []
    for text in (existing, missing):
        with pytest.raises(gr.Error) as err:
            studio.parse_heads(text)
        messages.append(str(err.value.message if hasattr(err.value, "message") else err.value).replace(text, "X"))
    assert messages[0] == messages[1]
    assert json.loads(studio.outside.read_text())["heads"] == "L0H1"  # it is a valid preset, still refused


def test_presets_are_offered_to_their_model_family_only(tmp_path):
    sd3 = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path)
    flux = Studio(tiny_pipeline("tiny-flux"), "tiny-flux", tmp_path)
    assert sd3.preset_names() == ["tiny-sd3-demo", "tiny-sd3-layer1"]
    assert flux.preset_names() == ["tiny-flux-demo"]
    # a FLUX.1-sized head layout, where SD3's presets would validate (L13H17 exists there too): not offered
    real_flux = Studio(tiny_pipeline("tiny-flux", num_layers=19, num_single_layers=38, num_heads=24),
                       "black-forest-labs/FLUX.1-dev", tmp_path)
    offered = real_flux.preset_names()
    assert "flux-golden-hour" in offered and not [n for n in offered if not n.startswith("flux-")]
    with pytest.raises(gr.Error):
        real_flux.parse_heads("sd3-shadow")
    # a search run made on another model family is not offered either
    (tmp_path / "search-sd3").mkdir()
    save_preset(tmp_path / "search-sd3" / "selected.json", "L1H0", model="tiny-sd3", family="tiny-sd3")
    assert "run:search-sd3" in sd3.preset_names() and "run:search-sd3" not in flux.preset_names()


def test_the_cost_of_an_atlas_or_a_search_is_known_before_it_starts(tmp_path):
    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path)
    assert studio.atlas_cost(1) == "Cost: 4 images (no speed measured yet: generate once for an estimate)"
    studio.generate("a red fox", "", 0, 2, 32, 1.0, 3.0, 1.0, "identity", "joint", 0.0, 1.0, "L1H0")
    assert studio.atlas_cost(1).startswith("Cost: 4 images, about ") and "s per image" in studio.atlas_cost(1)
    # a greedy search over the 12 heads: 2 prompts × 2 seeds = 4 pairs; 12 + 10 candidates over 2 rounds of k = 2
    assert studio.search_cost("a parrot\na boat", "0,1", 2, 2).startswith("Cost: 88 images, about ")
    assert studio.search_cost("", "0", 1, 1) == "Cost: —" and studio.search_cost("a", "x", 1, 1) == "Cost: —"


def test_a_search_honours_the_left_panel(tmp_path):
    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path)
    updates = list(studio.search("brightness", "", "a parrot", "0", 1, 1, 2, 32, 2.0, 3.0, 0.5, "uniform", "joint",
                                 "blurry"))
    [run] = tmp_path.glob("search-*")
    config = json.loads((run / "config.json").read_text())
    assert (config["pag_softness"], config["pag_target"], config["guidance_scale"], config["pag_scale"]) == \
           (0.5, "uniform", 3.0, 2.0)
    assert "negative_prompt" in config["extra"] and "blurry" in config["extra"]["negative_prompt"]
    assert any("softness 0.5, target uniform" in u[0] and "with the negative prompt" in u[0] for u in updates)
    with pytest.raises(gr.Error, match="Softness: 2"):
        list(studio.search("brightness", "", "a parrot", "0", 1, 1, 2, 32, 2.0, 1.0, 2.0, "identity", "joint", ""))
