"""The studio on the modular-pipeline models (tiny Qwen-Image and FLUX.2 Klein base in Chromium at 1440×900; Z-Image
and Wan through the studio's API): generate with compare, atlas, XY, search, presets, the Python snippet and command
line that remake the image, and every image the page shows carries its settings."""

import io
import shlex
import urllib.request

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")

from test_ui import (ARTIFACTS, cell, free_port, launch_chromium, needs_chromium, render_xy, toast,  # noqa: E402
                     wait_heads)

from headhunter.metadata import settings_of  # noqa: E402
from headhunter.testing import tiny_modular_pipeline  # noqa: E402
from headhunter.ui import Settings, Studio, build_app  # noqa: E402
from headhunter.ui.settings import FIELDS  # noqa: E402


def _served_settings(url, src):
    """The headhunter settings in the PNG the page serves at ``src`` (what a right-click save or the component's
    own download gives)."""
    data = urllib.request.urlopen(src if src.startswith("http") else url.rstrip("/") + "/" + src.lstrip("/")).read()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return settings_of(image)


@pytest.fixture(scope="module", params=["qwenimage", "flux2"])
def modular_server(request, tmp_path_factory):
    model = f"tiny-{request.param}"
    studio = Studio(tiny_modular_pipeline(request.param), model, tmp_path_factory.mktemp("workspace"))
    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio, model
    app.close()


@needs_chromium
def test_the_studio_runs_the_model_in_the_browser(modular_server):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)").sync_playwright
    url, studio, model = modular_server
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.locator("#head-picker table").wait_for(timeout=30000)
        # generate with a head chosen on the grid: the compare pair and the difference are served with settings
        cell(page, 1, 0).click()
        wait_heads(page, "L1H0")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#downloads a").nth(1).wait_for(timeout=60000)
        page.wait_for_function("() => [...document.querySelectorAll('#compare img')].length === 2 && "
                               "[...document.querySelectorAll('#compare img')].every(i => i.complete && i.naturalWidth)")
        shown = [_served_settings(url, page.locator("#compare img").nth(i).get_attribute("src")) for i in range(2)]
        assert {s["pag_heads"] for s in shown} == {None, "L1H0"} and all(s["model"] == model for s in shown)
        difference = _served_settings(url, page.locator("#difference img").get_attribute("src"))
        assert difference["pag_heads"] == "L1H0" and "difference" in difference["image"]
        assert f"tiny_modular_pipeline('{model[5:]}')" in page.locator(".cm-content").first.inner_text()
        assert f"--model {model}" in page.get_by_label("Command line").input_value()
        # the atlas: each head of layer 1, labelled, each image with its settings
        page.get_by_role("tab", name="Head atlas").click()
        page.get_by_label("Layer").fill("1")
        page.get_by_role("button", name="Run atlas").click()
        page.locator("#atlas img").nth(2).wait_for(timeout=60000)
        page.wait_for_function("() => !document.querySelector('#atlas .pending, #atlas .generating')", timeout=60000)
        page.wait_for_timeout(1000)
        atlas = [_served_settings(url, page.locator("#atlas img").nth(i).get_attribute("src")) for i in range(3)]
        assert [s["pag_heads"] for s in atlas] == [None, "L1H0", "L1H1"]  # the unguided reference tile first
        page.screenshot(path=str(ARTIFACTS / f"studio-{model}-atlas-1440.png"))
        # the XY grid: 2 head sets × 2 PAG scales, the shown grid with its settings
        render_xy(page, "none\nL1", "0,2")
        grid = _served_settings(url, page.locator("#xy-grid img").get_attribute("src"))
        assert grid["xy"]["rows"] == ["no heads (unguided)", "L1"] and grid["xy"]["values"] == [0.0, 2.0]
        # a search of one round, its heads saved as a preset of this model
        page.get_by_role("tab", name="Search").click()
        page.get_by_label("Content prompts").fill("a parrot")
        page.get_by_label("Seeds").fill("0")
        page.get_by_label("Rounds").fill("1")
        page.get_by_role("button", name="Search", exact=True).click()
        page.locator("#search-status", has_text="done").wait_for(timeout=120000)
        assert page.get_by_label("Selected heads").input_value().startswith("L")
        page.screenshot(path=str(ARTIFACTS / f"studio-{model}-search-1440.png"), full_page=True)
        page.get_by_text("Save, export, import presets").click()
        page.get_by_label("Preset name", exact=True).fill("mine")
        page.get_by_role("button", name="Save in the workspace").click()
        toast(page, "saved as saved:mine")
        page.get_by_label("Preset", exact=True).click()
        options = [text.split("\n")[-1] for text in page.get_by_role("option").all_inner_texts()]  # (less the ✓)
        assert "saved:mine" in options and not [o for o in options if o.startswith(("sd3-", "flux-", "tiny-sd3"))]
        browser.close()


@pytest.mark.parametrize("model_type", ["qwenimage", "flux2", "zimage", "wan"])
def test_the_snippet_and_the_command_line_remake_the_guided_image(model_type, tmp_path):
    from headhunter.cli import main
    from headhunter.metadata import settings_of

    model = f"tiny-{model_type}"
    studio = Studio(tiny_modular_pipeline(model_type), model, tmp_path / "workspace")
    settings = Settings("a red fox", seed=5, steps=2, width=32, height=32, pag_scale=2.0, heads="L1H0,L0", cfg=studio.defaults.cfg)
    (unguided, guided), diff, _, python, cli, files, *_ = studio.generate(settings)
    assert settings_of(guided)["pag_heads"] == "L1H0,L0" and settings_of(unguided)["pag_heads"] is None
    assert settings_of(diff)["seed"] == 5 and studio.defaults.cfg == (5.0 if model_type == "wan" else 1.0)
    namespace = {}
    exec(compile(python, "snippet", "exec"), namespace)
    made = np.asarray(namespace["image"].convert("RGB")).astype(int)
    diff_levels = np.abs(made - np.asarray(guided).astype(int))
    assert diff_levels.max() <= 1 and (diff_levels > 0).mean() < 0.01  # the studio batched it with the unguided one
    assert main(shlex.split(cli)[1:] + ["--out", str(tmp_path / "cli")]) == 0
    [png] = (tmp_path / "cli").glob("*.png")
    diff_levels = np.abs(np.asarray(Image.open(png).convert("RGB")).astype(int) - np.asarray(guided).astype(int))
    assert diff_levels.max() <= 1 and (diff_levels > 0).mean() < 0.01
    restored = studio.restore(studio.generate(settings)[6], 0)
    pair = restored[len(FIELDS)]
    assert settings_of(pair[1])["pag_heads"] == "L1H0,L0"  # a history click shows images with settings


def test_the_ui_command_refuses_what_it_cannot_load(tmp_path, capsys):
    from headhunter.cli import main

    (tmp_path / "model_index.json").write_text('{"_class_name": "WanImageToVideoPipeline"}')
    assert main(["ui", "--model", str(tmp_path)]) == 2
    assert "use headhunter.perturb or HeadHunterGuidance from Python" in capsys.readouterr().err
