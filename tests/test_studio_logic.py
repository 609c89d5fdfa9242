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
from headhunter.ui import Settings, Studio  # noqa: E402


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
    workspace_file = str(studio.workspace.root / "search-a" / "selected.json")  # a path, even to the studio's own file
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
            assert not [p for p in opened if str(studio.workspace.root) not in p and "presets" not in p], opened
        opened.clear()
        grid = studio.picker(text)  # the grid shows the same message, and reads nothing either
        assert "is neither a head spec" in grid and 'class="on"' not in grid
        assert not [p for p in opened if str(studio.workspace.root) not in p and "presets" not in p], opened


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
    assert studio.atlas_cost(1) == "Cost: 5 images (no speed measured yet: generate once for an estimate)"
    studio.generate(Settings("a red fox", steps=2, width=32, height=32, heads="L1H0"))
    assert studio.atlas_cost(1).startswith("Cost: 5 images, about ") and "s per image" in studio.atlas_cost(1)
    # a greedy search over the 12 heads: 2 prompts × 2 seeds = 4 pairs; 12 + 10 candidates over 2 rounds of k = 2
    assert studio.search_cost("a parrot\na boat", "0,1", 2, 2).startswith("Cost: 88 images, about ")
    assert studio.search_cost("", "0", 1, 1) == "Cost: —" and studio.search_cost("a", "x", 1, 1) == "Cost: —"


def test_a_search_honours_the_left_panel(tmp_path):
    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path)
    panel = Settings("x", negative="blurry", steps=2, width=32, height=32, cfg=3.0, pag_scale=2.0, softness=0.5, target="uniform")
    updates = list(studio.search("brightness", "", "a parrot", "0", 1, 1, panel))
    [run] = tmp_path.glob("search-*")
    config = json.loads((run / "config.json").read_text())
    assert (config["pag_softness"], config["pag_target"], config["guidance_scale"], config["pag_scale"]) == \
           (0.5, "uniform", 3.0, 2.0)
    assert "negative_prompt" in config["extra"] and "blurry" in config["extra"]["negative_prompt"]
    assert any("softness 0.5, target uniform" in u[0] and "with the negative prompt" in u[0] for u in updates)
    with pytest.raises(gr.Error, match="Softness: 2"):
        list(studio.search("brightness", "", "a parrot", "0", 1, 1, Settings("x", steps=2, width=32, height=32, softness=2.0)))


# --- head picker ---------------------------------------------------------------------------------------------------
def test_picker_cells_are_named_shaded_by_softness_and_flag_mistakes(studio):
    html = studio.picker("L0H1,L2H3@0.25", softness=0.5)
    for layer in range(3):
        for head in range(4):
            assert f'data-layer="{layer}" data-head="{head}" title="L{layer}H{head}' in html  # every cell: tooltip
        assert f'title="L{layer}: toggle the whole layer">L{layer}</th>' in html  # every row labelled
    assert all(f"<th>H{h}</th>" in html for h in range(4))  # every head labelled
    # u = 0.5 (the panel's softness) and u = 0.25 (the head's own): alpha 0.3 + 0.7 u
    assert 'title="L0H1 @ u=0.5" style="background:rgba(249, 115, 22, 0.65)"' in html
    assert 'title="L2H3 @ u=0.25" style="background:rgba(249, 115, 22, 0.47)"' in html
    assert html.count('class="on"') == 2
    assert "outside [0, 1]" in studio.picker("L0H1@2") and 'class="on"' not in studio.picker("L0H1@2")
    assert "layer 7 is out of range" in studio.picker("L7H0")


def test_picker_clicks_toggle_heads_rows_and_split_a_layer(studio):
    assert studio.pick("", 1, 2) == "L1H2"
    assert studio.pick("L1H2", 1, 2) == ""
    assert studio.pick("L1@0.5", 1, 2) == "L1H0-1@0.5,L1H3@0.5"  # a head inside a layer selection splits it
    assert studio.pick("L0H1,L1", 1, None) == "L0H1"  # the row label switches the whole layer off
    assert studio.pick("L1H0,L0H1", 1, None) == "L0H1,L1"  # ... or on, in place of its single heads
    assert studio.pick("L1H0-3", 1, None) == ""  # every head picked one by one is the whole layer too


def test_picker_shows_flux_rows_with_a_legend():
    flux = Studio(tiny_pipeline("tiny-flux"), "tiny-flux", "unused-workspace")
    html = flux.picker("")
    assert "double-stream L0–L2" in html and "single-stream L3–L4" in html
    assert html.count('<tr class="double">') == 3 and html.count('<tr class="single">') == 2


# --- names and confinement -----------------------------------------------------------------------------------------
BAD_NAMES = ["../outside", "..", "/etc/passwd", "a/b", "a\\b", "~root", "x" * 65, "name.json", "run:x", "", " "]


def test_run_and_preset_names_are_checked_and_nothing_is_written_outside(studio, tmp_path):
    before = {p for p in studio.workspace.root.parent.rglob("*")}
    for name in BAD_NAMES[:-2]:  # empty names are allowed where a default exists (export, new run)
        with pytest.raises(gr.Error, match="letters, digits"):
            studio.save_preset(name, "", "L0H1", 3.0, 1.0)
        with pytest.raises(gr.Error, match="letters, digits"):
            studio.export_preset(name, "", "L0H1", 3.0, 1.0)
        with pytest.raises(gr.Error, match="letters, digits"):
            list(studio.search("colorfulness", "", "a", "0", 1, 1, Settings("x", steps=1, width=32, height=32), run_name=name))
        with pytest.raises(gr.Error, match="letters, digits"):
            list(studio.resume(name))
        with pytest.raises(gr.Error, match="letters, digits"):
            studio.show_run(name)
    with pytest.raises(gr.Error, match="is not a headhunter search run"):
        studio.show_run("missing")  # the same kind of message for a run that is not there
    assert {p for p in studio.workspace.root.parent.rglob("*")} == before


def test_saved_exported_and_imported_presets(studio, tmp_path):
    menu = studio.save_preset("my-heads", "two early heads", "L0H1,L1H2@0.5", 2.5, 0.75)
    assert menu["value"] == "saved:my-heads" and "saved:my-heads" in menu["choices"]
    assert studio.apply_preset("saved:my-heads") == ("L0H1,L1H2@0.5", 2.5, 0.75)
    exported = studio.export_preset("shared", "for a friend", "L2", 4.0, 1.0)
    data = json.loads(pathlib.Path(exported).read_text())
    assert (data["heads"], data["family"], data["pag_scale"], data["description"]) == ("L2", "tiny-sd3", 4.0, "for a friend")
    other = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path / "elsewhere")
    heads, scale, softness, menu = other.import_preset(exported)
    assert (heads, scale, softness, menu["value"]) == ("L2", 4.0, 1.0, "saved:shared")
    assert (tmp_path / "elsewhere" / "presets" / "shared.json").is_file()
    flux_file = tmp_path / "flux.json"
    save_preset(flux_file, "L0H1", model="tiny-flux", family="tiny-flux")
    with pytest.raises(gr.Error, match="made for tiny-flux models"):
        other.import_preset(str(flux_file))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(gr.Error, match="Import: "):
        other.import_preset(str(tmp_path / "bad.json"))


def test_the_cheap_modes_reach_the_call_the_snippets_the_pngs_and_the_cost_note(studio):
    panel = Settings("a red fox", seed=2, steps=4, width=32, height=32, cfg=1.0, pag_scale=2.0, heads="L1H0", reuse=2)
    (unguided, guided), _, _, python, cli, files, history, *_ = studio.generate(panel)
    assert "pag_reuse=2" in python and "--pag-reuse 2" in cli and "pag_mode" not in python
    from headhunter.metadata import read_settings
    assert read_settings(files[1])["pag_reuse"] == 2
    assert Settings.from_metadata(read_settings(files[1]), "sd3").reuse == 2  # a dropped PNG restores it
    # 4 steps, reuse 2: the perturbed pass on steps 0 and 2 of 4
    note = studio.mode_cost(panel)
    assert note.startswith("Cost: 1.50 transformer passes per step (exact 2.00, unguided 1)") and "measured" in note
    uncond = Settings("a red fox", steps=4, width=32, height=32, cfg=3.0, heads="L1H0", mode="uncond")
    assert studio.mode_cost(uncond).startswith("Cost: 2.00 transformer passes per step (exact 3.00, unguided 2)")
    _, _, _, python, cli, *_ = studio.generate(uncond)
    assert "pag_mode='uncond'" in python and "--pag-mode uncond" in cli


@pytest.mark.parametrize("fields,message", [
    (dict(reuse=0), "Reuse: 1 or more"),
    (dict(reuse="two"), "Reuse: a whole number"),
    (dict(mode="third"), "Mode: one of cond, uncond"),
    (dict(mode="uncond", cfg=1.0), "Mode uncond perturbs CFG's unconditional pass: it needs CFG above 1"),
])
def test_bad_cheap_mode_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        Settings("a fox", **fields).checked()
