"""The studio: driven in headless Chromium (Playwright), called concurrently through gradio_client, and fed bad input."""

import contextlib
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")

from headhunter.heads import save_preset  # noqa: E402
from headhunter.testing import tiny_pipeline  # noqa: E402
from headhunter.ui import Settings, Studio, build_app  # noqa: E402
from headhunter.ui.studio import BATCH_LIMIT  # noqa: E402

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
PANEL = Settings("unused", steps=2, width=32, height=32, pag_scale=3.0)  # the left panel a search takes its settings from


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    (workspace / "search-test").mkdir()
    save_preset(workspace / "search-test" / "selected.json", "L1H0,L2H2", model="tiny-sd3", pag_scale=2.0)
    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", workspace)
    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio, workspace
    app.close()


def launch_chromium(playwright):
    """Debian's chromium, headless, with nothing reaching out to the network."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


def test_binds_loopback_by_default():
    import inspect

    from headhunter.ui import launch

    assert inspect.signature(launch).parameters["host"].default == "127.0.0.1"
    from headhunter.cli import build_parser

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"


def test_concurrent_generate_calls_return_their_own_images(server):
    from gradio_client import Client

    url, _, _ = server
    settings = ["a red fox", "", 3, 2, 32, 32, 1.0, 3.5, 3.0, 0.0, 1.0, "identity", "joint", 0.0, 1.0]

    def call(heads):
        result = Client(url, verbose=False).predict(*settings, heads, 1, api_name="/generate")
        slider = result[0]
        return [np.asarray(Image.open(p if isinstance(p, str) else p["path"])) for p in slider]

    single = {h: call(h) for h in ("L0H1", "L2")}
    results = {}

    def worker(h):
        results[h] = call(h)

    threads = [threading.Thread(target=worker, args=(h,)) for h in ("L0H1", "L2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in ("L0H1", "L2"):
        assert all(np.array_equal(a, b) for a, b in zip(results[h], single[h])), h
    assert not np.array_equal(single["L0H1"][1], single["L2"][1])  # the heads really differ



def test_images_reach_gradio_as_files_of_their_own_with_their_settings(tmp_path):
    """Gradio rewrites a PIL image's cache file in place (its name is the hash of its bytes), so two sessions showing
    the same image at once could read each other's half-written file; the page hands Gradio a file per call
    instead, which it copies into its cache atomically."""
    import gradio as gr

    from headhunter.metadata import settings_of, with_settings
    from headhunter.ui.app import shown_as_files

    image = with_settings(Image.new("RGB", (8, 8), (200, 10, 10)), {"seed": 3, "pag_heads": "L1H0"})
    first = shown_as_files(((image, image), "note", gr.update(value=[(image, "seed 3")], visible=True)), tmp_path)
    second = shown_as_files(((image, image), "note", None), tmp_path)
    (a, b), note, update = first
    assert a == b and note == "note" and update["visible"] is True and update["value"][0][1] == "seed 3"
    assert len({a, update["value"][0][0], second[0][0]}) == 2  # one file per image per call: never shared by calls
    for path in (a, second[0][0]):
        with Image.open(path) as shown:
            assert shown.format == "PNG" and np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(image))
            assert settings_of(shown)["pag_heads"] == "L1H0"


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="needs Debian's chromium (installed by .ci/run)")
VIEWPORTS = [pytest.param({"width": 1440, "height": 900}, id="1440x900"),
             pytest.param({"width": 800, "height": 900}, id="800px")]


@pytest.fixture
def page_at(server, request):
    """A fresh page of the studio at the test's viewport (one browser session each)."""
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)").sync_playwright
    url = server[0]
    with sync_playwright() as p:
        browser = launch_chromium(p)

        def open_page(viewport):
            context = browser.new_context(viewport=viewport, permissions=["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.goto(url)
            page.locator("#head-picker table").wait_for(timeout=30000)
            return page

        yield open_page
        browser.close()


def heads_value(page):
    return page.locator("#heads textarea, #heads input").first.input_value()


def wait_heads(page, value):
    page.wait_for_function("v => [...document.querySelectorAll('#heads textarea, #heads input')].some(e => e.value === v)",
                           arg=value, timeout=30000)
    page.wait_for_timeout(200)  # let the re-drawn grid settle before the next click


def cell(page, layer, head):
    return page.locator(f'#head-picker td[data-layer="{layer}"][data-head="{head}"]')


@contextlib.contextmanager
def slowed(transformer, seconds):
    """The transformer sleeping ``seconds`` before each call (slow enough to press Stop); yields the calls seen."""
    calls = []

    def slow(module, args):
        calls.append(1)
        time.sleep(seconds)

    handle = transformer.register_forward_pre_hook(slow)
    try:
        yield calls
    finally:
        handle.remove()


def toast(page, text):
    page.get_by_text(text).first.wait_for(timeout=30000)


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_head_picker_above_the_fold_in_sync_with_the_text(page_at, viewport):
    page = page_at(viewport)
    grid = page.locator("#head-picker table").bounding_box()
    assert grid["y"] >= 0 and grid["y"] + grid["height"] <= viewport["height"]  # the whole grid, no scrolling
    assert grid["width"] >= 4 * 20  # readable cells
    assert cell(page, 1, 2).get_attribute("title") == "L1H2"  # the hover tooltip
    cell(page, 1, 2).hover()
    page.locator("#head-picker th", has_text="H3").wait_for()  # every head labelled ...
    assert page.locator("#head-picker tbody th").all_inner_texts() == ["L0", "L1", "L2"]  # ... and every layer
    cell(page, 1, 2).click()
    wait_heads(page, "L1H2")
    page.locator('#head-picker tbody th[data-layer="0"]').click()  # the row label: the whole layer
    wait_heads(page, "L1H2,L0")
    cell(page, 0, 1).click()  # a head inside the layer selection splits it
    wait_heads(page, "L1H2,L0H0,L0H2-3")
    assert page.locator("#head-picker td.on").count() == 4
    # paste replaces the text, the grid follows, shaded by the pasted head's own softness
    page.evaluate("navigator.clipboard.writeText('L2H3@0.25')")
    box = page.locator("#heads textarea, #heads input").first
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Control+V")
    wait_heads(page, "L2H3@0.25")
    on = page.locator("#head-picker td.on")
    on.first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('#head-picker td.on').length === 1", timeout=10000)
    assert on.get_attribute("title") == "L2H3 @ u=0.25" and "0.47" in on.get_attribute("style")
    # typing after a mistake: the mistake is shown in the page, the next edit redraws
    box.fill("L2H3@2")
    page.locator("#head-picker .hh-error", has_text="outside [0, 1]").wait_for(timeout=10000)
    box.fill("L0H0")
    page.wait_for_function("() => !document.querySelector('#head-picker .hh-error') && "
                           "document.querySelectorAll('#head-picker td.on').length === 1", timeout=10000)
    # a preset fills the text, and the grid follows
    page.get_by_label("Preset").click()
    page.get_by_role("option", name="run:search-test").click()
    page.get_by_role("button", name="Use preset").click()
    wait_heads(page, "L1H0,L2H2")
    page.wait_for_function("() => document.querySelectorAll('#head-picker td.on').length === 2", timeout=10000)
    page.screenshot(path=str(ARTIFACTS / f"studio-picker-{viewport['width']}.png"))


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_atlas_with_its_cost_and_the_models_presets(page_at, viewport):
    page = page_at(viewport)
    # the preset menu offers this model's presets only (tiny-sd3's and the workspace's runs, no real-model presets)
    page.get_by_label("Preset").click()
    options = page.get_by_role("option").all_inner_texts()
    assert "tiny-sd3-demo" in options and "run:search-test" in options
    assert not [o for o in options if o.startswith(("sd3-", "flux-", "tiny-flux"))]
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Generate", exact=True).click()  # measures the speed for the estimate
    page.locator("#downloads a").nth(1).wait_for(timeout=30000)
    page.get_by_role("tab", name="Head atlas").click()
    page.locator("#atlas-cost").get_by_text("Cost: 5 images, about").wait_for(timeout=15000)  # 4 heads, unguided
    page.get_by_label("Layer").fill("1")
    page.get_by_role("button", name="Run atlas").click()
    page.locator("#atlas img").nth(4).wait_for(timeout=30000)
    page.wait_for_function("() => !document.querySelector('#atlas-cost .pending, #atlas-cost .generating')",
                           timeout=30000)
    page.wait_for_timeout(1000)  # the atlas event finishes after its last image arrives
    captions = page.locator("#atlas").get_by_text(re.compile(r"^L1H[0-3]$")).all_inner_texts()
    assert sorted(set(captions)) == ["L1H0", "L1H1", "L1H2", "L1H3"]  # one labelled image per head
    page.locator("#atlas img").nth(4).click()  # a click adds that head (the first tile is the unguided image)
    wait_heads(page, "L1H3")
    page.screenshot(path=str(ARTIFACTS / f"studio-atlas-{viewport['width']}.png"))


def shown_pixels(page, selector):
    """The page's own rendering of an image element, sampled at the centre of each source pixel."""
    img = page.locator(selector)
    natural = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    box = img.bounding_box()
    scale = min(box["width"] / natural[0], box["height"] / natural[1])
    left = box["x"] + (box["width"] - natural[0] * scale) / 2
    top = box["y"] + (box["height"] - natural[1] * scale) / 2
    shot = np.asarray(Image.open(__import__("io").BytesIO(page.screenshot())).convert("RGB"))
    xs = [int(left + (i + 0.5) * scale) for i in range(natural[0])]
    ys = [int(top + (j + 0.5) * scale) for j in range(natural[1])]
    return shot[np.ix_(ys, xs)], xs, ys


def covered(page, container, xs, ys, margin=2):
    """Which sampled points lie under the component's own label and buttons (drawn over the image)."""
    rects = page.locator(f"{container} label, {container} button, {container} .icon-button-wrapper").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect()).map(r => [r.left, r.top, r.right, r.bottom])")
    mask = np.zeros((len(ys), len(xs)), dtype=bool)
    for x0, y0, x1, y1 in rects:
        inside_x = np.array([x0 - margin <= x <= x1 + margin for x in xs])
        inside_y = np.array([y0 - margin <= y <= y1 + margin for y in ys])
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_compare_view_shows_both_images_pixel_aligned(page_at, viewport, server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = page_at(viewport)
    page.get_by_label("PAG scale", exact=True).fill("0")
    cell(page, 1, 1).click()
    wait_heads(page, "L1H1")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#downloads a").nth(1).wait_for(timeout=30000)
    images = page.locator("#compare img")
    images.nth(1).wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#compare img')].every(i => i.complete && i.naturalWidth)")
    page.locator("#compare").scroll_into_view_if_needed()
    boxes = [images.nth(i).bounding_box() for i in range(2)]
    assert boxes[0] == boxes[1]  # the same position and size: no offset, nothing hidden
    # the screenshot's pixels are the image's pixels on both sides of the slider
    import io
    import urllib.request

    from headhunter.metadata import read_settings

    # the page's two downloads: PNGs whose metadata reads back as the page's settings
    downloaded = {}
    for i in range(2):
        link = page.locator("#downloads a").nth(i)
        data = urllib.request.urlopen(link.get_attribute("href")).read()
        (tmp_path / f"download-{i}.png").write_bytes(data)
        meta = read_settings(tmp_path / f"download-{i}.png")
        assert (meta["prompt"], meta["pag_scale"], meta["num_inference_steps"]) == ("a red fox in the snow", 0.0, 2)
        downloaded[meta["pag_heads"]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert set(downloaded) == {None, "L1H1"}
    unguided = downloaded[None]
    seen, xs, ys = shown_pixels(page, "#compare img >> nth=0")  # pag_scale 0: the guided image is the same
    handle = page.locator("#compare img").nth(1).evaluate(
        "i => { const r = i.getBoundingClientRect(); return r.x + r.width / 2; }")
    # compared everywhere but under the slider's handle (its line and grip, 40 px wide) and the component's own
    # label and buttons
    compared = ~covered(page, "#compare", xs, ys) & np.array([abs(x - handle) > 24 for x in xs])[None, :]
    difference = np.abs(seen.astype(int) - unguided.astype(int))[compared]
    assert difference.max() <= 2, difference.max()
    half = len(xs) // 2
    assert compared[:, :half].sum() > 0.8 * half * len(ys) and compared[:, half:].sum() > 0.8 * half * len(ys)
    page.locator("#compare").screenshot(path=str(ARTIFACTS / f"studio-compare-{viewport['width']}.png"))


def render_xy(page, rows, values):
    """Fill the XY tab (rows: head sets, one per line; values: the column values), render, wait for the image."""
    page.get_by_role("tab", name="XY grid").click()
    box = page.locator("#xy-rows textarea")
    box.wait_for()
    box.fill(rows)
    field = page.locator("#xy-values textarea, #xy-values input").first
    field.fill(values)
    field.press("Tab")
    page.wait_for_timeout(300)
    page.get_by_role("button", name="Render grid").click()
    page.locator("#xy-grid img").wait_for(timeout=60000)
    page.wait_for_function("() => document.querySelector('#xy-grid img').naturalWidth > 0")


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_a_working_session_seed_batch_history_xy_png_and_presets(page_at, viewport, server, tmp_path):
    url, studio, workspace = server
    page = page_at(viewport)
    seed_box = page.get_by_label("Seed", exact=True)
    page.get_by_role("button", name="Random seed").click()
    page.wait_for_function("() => document.querySelector('input[aria-label=\"Seed\"]')?.value !== '0'", timeout=10000) \
        if page.locator('input[aria-label="Seed"]').count() else page.wait_for_timeout(1000)
    seed_box.fill("11")
    page.get_by_label("Seed batch").fill("2")
    cell(page, 0, 2).click()
    wait_heads(page, "L0H2")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#history img").nth(1).wait_for(timeout=30000)
    assert page.locator("#history img").count() == 2
    # a click on the older generation restores its settings
    seed_box.fill("99")
    cell(page, 2, 0).click()
    wait_heads(page, "L0H2,L2H0")
    page.locator("#history img").nth(1).click()
    wait_heads(page, "L0H2")
    assert seed_box.input_value() == "11"
    # a headhunter PNG dropped on the page loads its settings
    png = tmp_path / "made.png"
    from headhunter.metadata import save_png

    save_png(Image.new("RGB", (32, 32)), png, {"prompt": "a lighthouse", "seed": 5, "num_inference_steps": 3,
                                               "width": 32, "height": 32, "pag_heads": "L1H3@0.5", "pag_scale": 2.5,
                                               "pag_softness": 0.5, "guidance_scale": 1.0})
    page.locator("#load-png input[type=file]").set_input_files(str(png))
    wait_heads(page, "L1H3@0.5")
    assert page.get_by_label("Prompt", exact=True).input_value() == "a lighthouse" and seed_box.input_value() == "5"
    # the XY grid: 2 head sets × 3 PAG scales, one labelled image of that size
    render_xy(page, "none\nL1", "0,2,4")
    natural = page.locator("#xy-grid img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    from headhunter.ui.xy import LABEL_HEIGHT, LABEL_WIDTH

    assert natural == [LABEL_WIDTH + 3 * 128, LABEL_HEIGHT + 2 * 128]
    page.locator("#xy-file a").first.wait_for(timeout=10000)
    page.screenshot(path=str(ARTIFACTS / f"studio-xy-{viewport['width']}.png"), full_page=True)
    # save the heads as a named preset: offered in the menu
    page.get_by_text("Save, export, import presets").click()
    name = f"browser-{viewport['width']}"
    page.get_by_label("Preset name", exact=True).fill(name)
    page.get_by_role("button", name="Save in the workspace").click()
    toast(page, f"saved as saved:{name}")
    assert (workspace / "presets" / f"{name}.json").is_file()
    # names and head fields that look like paths are refused, with the same message whether the file exists or not
    for text in ("../../etc/passwd", "/etc/hostname"):
        page.get_by_label("Preset name", exact=True).fill(text)
        page.get_by_role("button", name="Save in the workspace").click()
        toast(page, "Preset name: use letters, digits, '-' and '_' only")
        page.locator("#heads textarea, #heads input").first.fill(text)
        page.locator("#head-picker .hh-error", has_text="is neither a head spec").wait_for(timeout=10000)
    assert not (workspace.parent / "etc").exists()


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_stop_ends_a_generation_between_steps(page_at, viewport, server):
    _, studio, _ = server
    page = page_at(viewport)
    with slowed(studio.pipe.transformer, 0.05) as calls:
        page.get_by_label("Steps").fill("300")
        page.get_by_role("button", name="Generate", exact=True).click()
        # this page's own generation is running (its steps count in the status line): a job an earlier test left on
        # the shared pipeline would otherwise make the transformer calls counted here
        page.locator("#generate-status", has_text=re.compile(r"\d+\s*/\s*300")).wait_for(timeout=60000)
        running = len(calls)
        page.locator("#stop-images").click()
        page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=30000)
        stopped = len(calls)
        page.wait_for_timeout(1000)
        assert len(calls) == stopped  # nothing runs on after Stop
        assert stopped - running < 100  # of 300 steps: it ended between steps, long before its last
        assert page.locator("#history img").count() == 0  # and left no result behind


def wait_listed(page, name, status, timeout=15):
    """Wait until the run list shows ``name`` with ``status`` (a row reads "name status objective ...")."""
    deadline = time.time() + timeout
    while True:
        text = " ".join(page.locator("#runs").evaluate("e => e.textContent").split())
        if f"{name} {status}" in text:
            return
        assert time.time() < deadline, text
        page.wait_for_timeout(200)


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_search_runs_are_named_listed_stopped_and_resumed_in_the_browser(page_at, viewport, server, tmp_path):
    _, studio, workspace = server
    page = page_at(viewport)
    name = f"browser-run-{viewport['width']}"
    page.get_by_role("tab", name="Search").click()
    assert "steps 2, size 32×32, CFG 1" in page.locator("#search-uses").inner_text()  # what the search takes
    page.locator("#run-name textarea, #run-name input").first.fill("../escape")
    page.get_by_role("button", name="Search", exact=True).click()
    toast(page, "Run name: use letters, digits")
    page.locator("#run-name textarea, #run-name input").first.fill(name)
    page.get_by_label("Content prompts").fill("a parrot\na boat")
    page.get_by_label("Seeds").fill("0")
    page.get_by_label("Rounds").fill("2")
    hook = studio.pipe.transformer.register_forward_pre_hook(lambda *a: time.sleep(0.3))  # slow enough to Stop
    try:
        page.get_by_role("button", name="Search", exact=True).click()
        page.locator("#search-status", has_text="best head so far").wait_for(timeout=60000)
        page.locator("#stop-search").click()
        page.locator("#search-status", has_text="stopped — resumable").wait_for(timeout=60000)
    finally:
        hook.remove()
    wait_listed(page, name, "stopped — resumable")
    assert page.locator("#ranking tbody tr").count() >= 1
    page.locator("#run-name textarea, #run-name input").first.fill("")
    page.locator("#runs").get_by_text(name, exact=True).locator("visible=true").first.click()  # choose it ...
    page.wait_for_function("n => [...document.querySelectorAll('#run-name textarea, #run-name input')].some(e => e.value === n)",
                           arg=name, timeout=10000)
    page.get_by_role("button", name="Resume the chosen run").click()  # ... and resume it
    page.locator("#search-status", has_text="done").wait_for(timeout=120000)
    selected = page.get_by_label("Selected heads").input_value()
    reference = __import__("headhunter.search", fromlist=["HeadHunter"]).HeadHunter(
        studio.pipe, "colorfulness", ["a parrot", "a boat"], [0], 2, 2, tmp_path / "reference", num_inference_steps=2,
        height=32, width=32, pag_scale=3.0, guidance_scale=1.0, model_name="tiny-sd3", progress=False).run()
    assert selected == str(reference.selected)
    wait_listed(page, name, "done")
    page.screenshot(path=str(ARTIFACTS / f"studio-search-{viewport['width']}.png"), full_page=True)


def test_search_tab_yields_heatmaps_and_becomes_a_preset(server):
    _, studio, workspace = server
    updates = list(studio.search("colorfulness", "vivid", "a parrot\na boat", "0", 1, 2, PANEL))
    status, heatmap, ranking, selected, preset, runs = updates[-1]
    assert " done: " in status and isinstance(heatmap, Image.Image)
    assert len(selected.split(",")) == 2 and len(ranking) == 11  # round 2: 12 heads less the one chosen in round 1
    assert preset["value"].startswith("run:search-") and preset["value"] in studio.preset_names()
    assert [r for r in runs if r[0] == preset["value"][4:]][0][1:4] == ["done", "colorfulness", selected]


def _wait_for_scores(workspace, runs_before, at_least, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = set(workspace.glob("search-*")) - runs_before
        if runs:
            count = sum(len(p.read_text().splitlines()) for p in next(iter(runs)).glob("scores*.jsonl"))
            if count >= at_least:
                return next(iter(runs)), count
        time.sleep(0.05)
    raise AssertionError("the search scored nothing")


def _scores(run_dir):
    return sum(len(p.read_text().splitlines()) for p in run_dir.glob("scores*.jsonl"))


def test_stop_ends_this_sessions_search_after_the_batch_in_flight(server):
    _, studio, workspace = server
    runs_before = set(workspace.glob("search-*"))
    me, other = SimpleNamespace(session_hash="user-a"), SimpleNamespace(session_hash="user-b")
    searching = studio.search("colorfulness", "", "a parrot\na boat\na bird", "0,1,2", 1, 3, PANEL, request=me)
    updates = []
    worker = threading.Thread(target=lambda: updates.extend(searching))
    worker.start()
    run_dir, _ = _wait_for_scores(workspace, runs_before, 8)
    studio.stop_search(other)  # another user's Stop does not touch this search
    time.sleep(0.5)
    at_stop = _scores(run_dir)
    assert at_stop > 8
    studio.stop_search(me)
    worker.join(timeout=60)
    assert not worker.is_alive()
    after = _scores(run_dir)
    assert after <= at_stop + 8  # the batch in flight (8 images) at most
    time.sleep(1.0)
    assert _scores(run_dir) == after  # nothing runs after it
    status = updates[-1][0]
    assert " stopped — resumable: " in status and f"{after} of 297 images" in status
    running = [u[0] for u in updates if "running… " in u[0]]
    assert any(" / 297 images" in line and "best head so far L" in line for line in running)  # live progress
    # resumable: the same search in the same run directory picks up where it stopped
    from headhunter.search import HeadHunter

    again = HeadHunter(studio.pipe, "colorfulness", ["a parrot", "a boat", "a bird"], [0, 1, 2], 1, 3, run_dir,
                       num_inference_steps=2, height=32, width=32, pag_scale=3.0, guidance_scale=1.0,
                       model_name="tiny-sd3", progress=False)  # the studio's settings, CFG 1 from its left panel
    again.store.check_config()  # the same search: it would resume, not be refused
    assert len(again.store.load()) == after  # with every image scored so far


def test_an_image_waits_for_at_most_the_batch_in_flight_of_a_search(server):
    _, studio, workspace = server
    runs_before = set(workspace.glob("search-*"))
    me = SimpleNamespace(session_hash="searcher")
    searching = studio.search("colorfulness", "", "a parrot\na boat\na bird", "0,1,2", 1, 3, PANEL, request=me)
    worker = threading.Thread(target=lambda: list(searching))
    worker.start()
    try:
        run_dir, _ = _wait_for_scores(workspace, runs_before, 8)
        before = _scores(run_dir)
        (unguided, guided), *_ = studio.generate(Settings("a red fox", steps=2, width=32, height=32, heads="L1H0"))
        during = _scores(run_dir) - before
        assert during <= 16, during  # the batch in flight (and its scoring), not the rest of the search
        assert guided.size == (32, 32)
    finally:
        studio.stop_search(me)
        worker.join(timeout=60)


def test_ui_command_rejects_a_bad_port(capsys):
    from headhunter.cli import main

    assert main(["ui", "--port", "70000"]) == 2
    assert "not a TCP port" in capsys.readouterr().err


def test_python_snippet_and_command_line_regenerate_the_guided_image(server, tmp_path):
    import shlex

    from headhunter.cli import main

    _, studio, _ = server
    (unguided, guided), _, _, python, cli, *_ = studio.generate(Settings("a red fox", seed=5, steps=2, width=32, height=32, pag_scale=2.0,
                                                                        softness=0.5, target="uniform", heads="L1H2,L0"))
    namespace = {}
    exec(compile(python, "snippet", "exec"), namespace)
    diff = np.abs(np.asarray(namespace["image"]).astype(int) - np.asarray(guided).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # the studio batched it with the unguided image
    assert "--heads L1H2,L0" in cli and "--target uniform" in cli
    assert main(shlex.split(cli)[1:] + ["--out", str(tmp_path)]) == 0
    [png] = tmp_path.glob("*.png")
    diff = np.abs(np.asarray(Image.open(png).convert("RGB")).astype(int) - np.asarray(guided).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_shown_images_are_lossless_and_downloads_carry_their_settings(server):
    """The compare view's pixels are PNG, equal to what the page's own Python snippet makes, and the two downloads
    carry the CLI's metadata (read back here)."""
    from gradio_client import Client

    from headhunter.metadata import read_settings

    url, _, _ = server
    settings = ["a red fox", "", 5, 2, 32, 32, 1.0, 3.5, 3.0, 0.0, 0.5, "identity", "joint", 0.0, 1.0]
    slider, _, _, python, _, files, *_ = Client(url, verbose=False).predict(*settings, "L0H1,L2", 1, api_name="/generate")
    paths = [p if isinstance(p, str) else p["path"] for p in slider]
    assert all(Image.open(p).format == "PNG" for p in paths)
    shown = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    namespace = {}
    exec(python, namespace)  # the snippet as the page shows it: it makes the guided image
    # lossless: the only difference left is the studio batching guided with unguided (~1e-6, which can move a pixel
    # across an 8-bit level), where WebP display differed by 21/255 on average
    diff = np.abs(np.asarray(namespace["image"].convert("RGB")).astype(int) - shown[1].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    downloads = sorted((f if isinstance(f, str) else f["path"] for f in files), key=lambda p: p.rsplit("/", 1)[-1])
    assert [p.rsplit("-", 1)[-1] for p in downloads] == ["guided.png", "unguided.png"]
    guided, unguided = (read_settings(p) for p in downloads)
    assert guided["pag_heads"] == "L0H1,L2" and unguided["pag_heads"] is None
    assert (guided["prompt"], guided["seed"], guided["pag_softness"], guided["num_inference_steps"]) == ("a red fox", 5, 0.5, 2)
    np.testing.assert_array_equal(np.asarray(Image.open(downloads[0]).convert("RGB")), shown[1])
    np.testing.assert_array_equal(np.asarray(Image.open(downloads[1]).convert("RGB")), shown[0])


@needs_chromium
def test_closing_the_page_stops_its_search(server):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)").sync_playwright
    url, studio, workspace = server
    runs_before = set(workspace.glob("search-*"))
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Search").click()
        page.get_by_label("Content prompts").fill("a parrot\na boat\na bird\na house\na tree")
        page.get_by_label("Seeds").fill("0,1,2,3,4,5")
        page.get_by_label("Rounds").fill("3")
        page.get_by_role("button", name="Search", exact=True).click()
        page.get_by_text("running…").first.wait_for(timeout=60000)
        run_dir, _ = _wait_for_scores(workspace, runs_before, 8)
        page.close()  # the user closes the tab
        browser.close()
    deadline = time.time() + 30
    last, still = _scores(run_dir), 0
    while time.time() < deadline and still < 3:  # wait until nothing is written for 1.5 s
        time.sleep(0.5)
        now = _scores(run_dir)
        still, last = (still + 1, now) if now == last else (0, now)
    assert still >= 3, "the search kept running after its page closed"
    assert last < (12 + 10 + 8) * 30  # far from the end of the search


def test_a_chroma_studio_serves_guided_images_through_its_api(tmp_path):
    """The whole app on a Chroma pipeline (double- then single-stream layers, CFG as guidance_scale)."""
    from gradio_client import Client

    studio = Studio(tiny_pipeline("tiny-chroma"), "tiny-chroma", tmp_path / "workspace")
    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        settings = ["a red fox", "blurry", 3, 2, 32, 32, 2.0, 3.5, 3.0, 0.0, 1.0, "identity", "joint", 0.0, 1.0]
        result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(*settings, "L1H0,L3", 1,
                                                                            api_name="/generate")
        unguided, guided = (np.asarray(Image.open(p if isinstance(p, str) else p["path"])) for p in result[0])
        assert unguided.shape == guided.shape == (32, 32, 3) and not np.array_equal(unguided, guided)
    finally:
        app.close()


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_out_of_range_fields_and_bad_heads_are_one_named_toast_and_the_last_result_stays(page_at, viewport):
    """Typed as an artist would: each mistake is one toast naming the field (as text: the heads help's L<layer>H<head>
    survives), and the compare view keeps the last result instead of turning into error badges."""
    page = page_at(viewport)
    page.locator("#heads textarea, #heads input").first.fill("L1H0")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#history img").first.wait_for(timeout=60000)
    compare = page.locator("#compare img").first.get_attribute("src")
    cases = [("PAG scale", "-2", "3", "PAG scale: 0 or more, got -2"), ("Seed", "-5", "0", "Seed: 0 or more, got -5"),
             ("Seed batch", "50", "1", f"Seed batch: 1 to {BATCH_LIMIT}"), ("Steps", "0", "20", "Steps: 1 or more, got 0"),
             ("Softness", "5", "1", "Softness: 5 is outside [0, 1]")]
    for label, bad, good, message in cases:
        page.get_by_label(label, exact=True).fill(bad)
        page.get_by_role("button", name="Generate", exact=True).click()
        toast(page, message)
        page.wait_for_timeout(500)
        assert page.locator("[data-testid='toast-body']").filter(has_text=message).count() == 1  # not one per output
        assert page.locator("#compare img").first.get_attribute("src") == compare
        assert page.locator("#compare").get_by_text("Error").count() == 0
        page.get_by_label(label, exact=True).fill(good)
    page.get_by_label("Steps", exact=True).click()
    page.keyboard.press("Control+A")
    page.keyboard.type("abc")  # a number field drops the letters: Gradio sends no number
    page.get_by_role("button", name="Generate", exact=True).click()
    toast(page, "Steps: type a whole number")
    page.reload()
    page.locator("#head-picker table").wait_for(timeout=30000)
    page.locator("#heads textarea, #heads input").first.fill("L1H0 L2H1")
    page.get_by_role("button", name="Generate", exact=True).click()
    toast(page, "write L<layer>H<head> (L13H17)")
    toast(page, "it was written 'L1H0 L2H1', and spaces are ignored: separate heads with commas")
