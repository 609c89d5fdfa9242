"""The studio: driven in headless Chromium (Playwright), called concurrently through gradio_client, and fed bad input."""

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
from headhunter.ui import Studio, build_app  # noqa: E402
from headhunter.ui.grid import CELL, MARGIN  # noqa: E402

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"


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
    settings = ["a red fox", "", 3, 2, 32, 1.0, 3.0, 1.0, "identity", "joint", 0.0, 1.0]

    def call(heads):
        result = Client(url, verbose=False).predict(*settings, heads, api_name="/generate")
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_browser_pick_heads_generate_preset_atlas_and_bad_input(server):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)").sync_playwright
    url, studio, workspace = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(url)
        page.get_by_label("Prompt", exact=True).fill("a red fox")
        grid = page.locator("#head-grid img")
        grid.wait_for()
        box = grid.bounding_box()
        natural = grid.evaluate("img => [img.naturalWidth, img.naturalHeight]")

        def click_head(layer, head):
            x = (MARGIN + head * CELL + CELL / 2) * box["width"] / natural[0]
            y = (MARGIN + layer * CELL + CELL / 2) * box["height"] / natural[1]
            page.mouse.click(box["x"] + x, box["y"] + y)

        heads_box = page.get_by_label("Heads", exact=True)

        def wait_heads(value):
            page.wait_for_function("v => [...document.querySelectorAll('textarea, input')].some(e => e.value === v)",
                                   arg=value, timeout=60000)
            assert heads_box.input_value() == value
            page.wait_for_timeout(300)  # let the re-drawn grid image settle before the next click

        click_head(0, 1)
        wait_heads("L0H1")
        click_head(2, 3)
        wait_heads("L0H1,L2H3")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#compare img").nth(1).wait_for(timeout=30000)
        page.locator("#difference img").wait_for(timeout=30000)
        assert page.locator("#compare img").count() >= 2
        assert "--heads L0H1,L2H3" in page.get_by_label("Command line").input_value()
        page.screenshot(path=str(ARTIFACTS / "studio-generate.png"), full_page=True)

        # a preset from the workspace
        page.get_by_label("Preset").click()
        page.get_by_role("option", name="run:search-test").click()
        page.get_by_role("button", name="Use preset").click()
        wait_heads("L1H0,L2H2")

        # the atlas of layer 1: one image per head, labelled, clicking one adds it
        page.get_by_role("tab", name="Head atlas").click()
        page.locator("#atlas-cost").get_by_text("Cost: 4 images, about").wait_for(timeout=15000)  # measured by Generate
        page.get_by_label("Layer").fill("1")
        page.get_by_role("button", name="Run atlas").click()
        page.locator("#atlas img").nth(3).wait_for(timeout=30000)
        assert page.locator("#atlas img").count() >= 4
        page.screenshot(path=str(ARTIFACTS / "studio-atlas.png"), full_page=True)
        page.wait_for_function("() => !document.querySelector('#atlas .pending, #atlas .generating')", timeout=30000)
        page.wait_for_timeout(1000)  # the atlas event finishes after its last image arrives
        page.locator("#atlas img").nth(3).click()
        wait_heads("L1H0,L2H2,L1H3")

        # a bad head text shows a message and the app keeps serving
        page.get_by_role("tab", name="Generate").click()
        heads_box.fill("L9H9")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("L9H9: layer 9 is out of range").first.wait_for(timeout=15000)
        page.screenshot(path=str(ARTIFACTS / "studio-error.png"), full_page=True)
        # the message does not wipe the last good result: both images and the command line stay
        assert page.locator("#compare img").count() >= 2
        assert "--heads L0H1,L2H3" in page.get_by_label("Command line").input_value()
        assert not page.locator("#compare .error, #difference .error").count()
        heads_box.fill("L1H1")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("() => [...document.querySelectorAll('textarea, input')].some(e => (e.value || '').includes('--heads L1H1'))",
                               timeout=60000)
        browser.close()


def test_search_tab_yields_heatmaps_and_becomes_a_preset(server):
    _, studio, workspace = server
    updates = list(studio.search("colorfulness", "vivid", "a parrot\na boat", "0", 1, 2, 2, 32, 3.0))
    status, heatmap, selected, preset = updates[-1]
    assert status.startswith("done") and Path(heatmap).name == "round-1.png"
    assert len(selected.split(",")) == 2
    assert preset["value"].startswith("run:search-") and preset["value"] in studio.preset_names()


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
    searching = studio.search("colorfulness", "", "a parrot\na boat\na bird", "0,1,2", 1, 3, 2, 32, 3.0, request=me)
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
    assert status.startswith("stopped — resumable") and f"{after} of 297 images" in status
    assert any(u[0].startswith("running… ") and " / 297 images" in u[0] for u in updates)  # live progress
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
    searching = studio.search("colorfulness", "", "a parrot\na boat\na bird", "0,1,2", 1, 3, 2, 32, 3.0, request=me)
    worker = threading.Thread(target=lambda: list(searching))
    worker.start()
    try:
        run_dir, _ = _wait_for_scores(workspace, runs_before, 8)
        before = _scores(run_dir)
        (unguided, guided), *_ = studio.generate("a red fox", "", 0, 2, 32, 1.0, 3.0, 1.0, "identity", "joint", 0.0,
                                                 1.0, "L1H0")
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
    (unguided, guided), _, _, python, cli, _ = studio.generate("a red fox", "", 5, 2, 32, 1.0, 2.0, 0.5, "uniform",
                                                               "joint", 0.0, 1.0, "L1H2,L0")
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
    settings = ["a red fox", "", 5, 2, 32, 1.0, 3.0, 0.5, "identity", "joint", 0.0, 1.0]
    slider, _, _, python, _, files = Client(url, verbose=False).predict(*settings, "L0H1,L2", api_name="/generate")
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
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
