"""The studio as an artist coming from A1111 or ComfyUI tries it, in headless Chromium at 1440×900 and 800×900:
settings in every PNG the page shows (read from the bytes the page serves), a PNG dropped anywhere, Ctrl+Enter,
history that restores the whole run, a sensible start, progress and queue, search Stop and Resume, sizes in pixels,
galleries and XY axes. Screenshots go to test-artifacts/."""

import base64
import io
import re
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")

from test_png_parameters import A1111_TEXT, COMFY_GRAPH, parse_infotext  # noqa: E402
from test_ui import (ARTIFACTS, VIEWPORTS, cell, free_port, needs_chromium, page_at, render_xy, server,  # noqa: E402,F401
                     slowed, toast, wait_heads)

from headhunter.heads import load_preset  # noqa: E402
from headhunter.testing import toy_pipeline  # noqa: E402
from headhunter.ui import Studio, build_app  # noqa: E402

pytestmark = needs_chromium


def served(page, src):
    """The bytes the page serves for an image (what a right-click save gives)."""
    return urllib.request.urlopen(src if src.startswith("http") else page.url.rstrip("/") + src).read()


def png_text(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.text


def shown_settings(page, selector, index=0):
    """(A1111 fields parsed by hand, headhunter JSON) of the image the page shows at ``selector``."""
    text = png_text(served(page, page.locator(selector).nth(index).get_attribute("src")))
    import json

    return parse_infotext(text["parameters"]), json.loads(text["headhunter"])


def field(page, label):
    return page.get_by_label(label, exact=True)


def generate(page, count=1):
    """Press Generate and wait until the run's outputs are in (its downloads, and ``count`` history images)."""
    before = page.locator("#history img").count()
    page.locator("#generate").click()
    page.locator("#history img").nth(before + count - 1).wait_for(timeout=60000)
    page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=60000)


def drop_png(page, data, selector):
    """Drop PNG bytes on the element at ``selector``, as a file dragged from the desktop."""
    page.evaluate("""([b64, selector]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        const target = document.querySelector(selector);
        for (const type of ['dragenter', 'dragover', 'drop'])
            target.dispatchEvent(new DragEvent(type, {dataTransfer: files, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(data).decode(), selector])


def wait_calls(calls, count, timeout=60):
    """Wait until a forward hook has seen ``count`` transformer calls."""
    deadline = time.time() + timeout
    while len(calls) < count:
        assert time.time() < deadline, len(calls)
        time.sleep(0.02)


def png_bytes(**chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def wait_value(page, label, value, timeout=15):
    """Wait until the field labelled ``label`` holds ``value``."""
    deadline = time.time() + timeout
    while (shown := field(page, label).input_value()) != value:
        assert time.time() < deadline, (label, shown)
        page.wait_for_timeout(100)


def shot(page, name, viewport):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"artist-{name}-{viewport['width']}.png"), full_page=True)


def whole_in_gallery(page, gallery):
    """Every image of a gallery is drawn whole (no crop: object-fit contain, inside the visible grid, below the
    label) and every caption fits its tile."""
    return page.locator(gallery).evaluate("""(g) => {
        const wrap = g.querySelector('.grid-wrap').getBoundingClientRect();
        const label = g.querySelector('[data-testid=block-label]')?.getBoundingClientRect();
        return [...g.querySelectorAll('.thumbnail-item')].map((t) => {
            const img = t.querySelector('img').getBoundingClientRect();
            const caption = t.querySelector('.caption-label');
            return getComputedStyle(t.querySelector('img')).objectFit === 'contain'
                && img.top >= wrap.top - 1 && img.bottom <= wrap.bottom + 1 && img.left >= wrap.left - 1
                && img.right <= wrap.right + 1 && (!label || img.top >= label.bottom - 1)
                && (!caption || caption.scrollWidth <= caption.clientWidth + 1);
        });
    }""")


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    studio = Studio(toy_pipeline("toy-shapes"), "toy-shapes", tmp_path_factory.mktemp("workspace"))
    studio.pipe.set_progress_bar_config(disable=True)
    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_2_every_png_the_page_shows_carries_a1111_parameters_and_any_png_dropped_anywhere_loads(page_at, viewport):
    page = page_at(viewport)
    field(page, "Prompt").fill("a red fox, in the snow")
    field(page, "Negative prompt").fill("blurry, dark")
    field(page, "CFG").fill("2")
    field(page, "Seed").fill("7")
    page.locator("#heads textarea, #heads input").first.fill("L1H0")
    wait_heads(page, "L1H0")
    generate(page)
    for index, heads in ((0, None), (1, "L1H0")):  # what a right-click save on either half gives
        (prompt, negative, pairs), meta = shown_settings(page, "#compare img", index)
        assert (prompt, negative) == ("a red fox, in the snow", "blurry, dark")
        assert {k: pairs[k] for k in ("Steps", "CFG scale", "Seed", "Size")} == \
            {"Steps": "2", "CFG scale": "2", "Seed": "7", "Size": "32x32"}
        assert (meta["pag_heads"], meta["pag_scale"], meta["pag_softness"], meta["pag_target"], meta["pag_scope"],
                meta["pag_interval"]) == (heads, 3.0, 1.0, "identity", "joint", [0.0, 1.0])
        assert ("PAG heads" in pairs) == (heads is not None)
    # the slider's own download icon
    with page.expect_download() as download:
        page.locator("#compare button[aria-label='Download'], #compare a[download]").first.click()
    prompt, _, pairs = parse_infotext(png_text(open(download.value.path(), "rb").read())["parameters"])
    assert prompt == "a red fox, in the snow" and pairs["Seed"] == "7"
    # the XY grid as shown
    render_xy(page, "none\nL1", "0,2")
    (prompt, _, pairs), meta = shown_settings(page, "#xy-grid img")
    assert prompt == "a red fox, in the snow" and meta["xy"]["values"] == [0.0, 2.0] and pairs["CFG scale"] == "2"
    guided = served(page, page.locator("#compare img").nth(1).get_attribute("src"))
    # an A1111 PNG dropped on the compare view: the fields A1111 shares, the heads stay
    page.get_by_role("tab", name="Generate").click()
    drop_png(page, png_bytes(parameters=A1111_TEXT.replace("832x1216", "64x48")), "#compare")
    wait_value(page, "Prompt", "masterpiece, a cat, sitting on a chair")
    assert [field(page, f).input_value() for f in ("Negative prompt", "Seed", "Steps", "Width", "Height", "CFG")] == \
        ["lowres, bad anatomy", "1234567", "28", "64", "48", "6.5"]
    toast(page, "loaded what this A1111 PNG shares")
    assert page.locator("#heads textarea, #heads input").first.input_value() == "L1H0"
    # a ComfyUI PNG dropped on the page's title
    drop_png(page, png_bytes(prompt=__import__("json").dumps(COMFY_GRAPH)), "h2")
    wait_value(page, "Prompt", "beautiful scenery, nature")
    assert [field(page, f).input_value() for f in ("Negative prompt", "Steps", "CFG")] == ["text, watermark", "25", "4.5"]
    # and the page's own guided image, dropped on the history strip: every field comes back
    page.locator("#heads textarea, #heads input").first.fill("L2")
    drop_png(page, guided, "#history")
    wait_heads(page, "L1H0")
    assert [field(page, f).input_value() for f in ("Prompt", "Seed", "Steps", "CFG")] == \
        ["a red fox, in the snow", "7", "2", "2"]
    shot(page, "png", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_3_generate_is_in_reach_and_ctrl_enter_or_enter_generates(page_at, viewport):
    page = page_at(viewport)
    box = page.locator("#generate").bounding_box()
    assert box["y"] + box["height"] <= viewport["height"]  # on the first screen, without scrolling
    field(page, "Seed").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("21")
    page.keyboard.press("Control+Enter")
    page.locator("#history img").first.wait_for(timeout=60000)
    page.locator("#history").get_by_text("seed 21").wait_for(timeout=10000)
    page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=60000)
    field(page, "Prompt").fill("a blue boat")
    field(page, "Prompt").press("Enter")
    page.locator("#history img").nth(1).wait_for(timeout=60000)
    page.wait_for_function("() => [...document.querySelectorAll('#downloads a')].some(a => a.href.includes('a-blue-boat'))",
                           timeout=30000)
    shot(page, "keys", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_4_a_history_click_restores_every_output_of_that_run(page_at, viewport):
    page = page_at(viewport)
    field(page, "Seed").fill("1")
    page.locator("#heads textarea, #heads input").first.fill("L1H0")
    wait_heads(page, "L1H0")
    generate(page)
    first_note = page.locator("#difference-note").inner_text()
    field(page, "Seed").fill("2")
    field(page, "PAG scale").fill("5")
    page.locator("#heads textarea, #heads input").first.fill("L2")
    wait_heads(page, "L2")
    generate(page)
    assert "--seed 2" in page.locator("#cli textarea, #cli input").first.input_value()
    page.locator("#history img").nth(1).click()  # the older run
    page.wait_for_function("() => /--seed 1 /.test(document.querySelector('#cli textarea, #cli input').value)",
                           timeout=15000)
    cli = page.locator("#cli textarea, #cli input").first.input_value()
    assert "--heads L1H0" in cli and "--pag-scale 3.0" in cli
    assert "manual_seed(1)" in page.locator("#python .cm-content").inner_text()
    assert "pag_heads='L1H0'" in page.locator("#python .cm-content").inner_text()
    _, meta = shown_settings(page, "#difference img")
    assert (meta["seed"], meta["pag_heads"], meta["pag_scale"]) == (1, "L1H0", 3.0)
    for index in range(2):
        _, meta = shown_settings(page, "#compare img", index)
        assert meta["seed"] == 1
    hrefs = [a.get_attribute("href") for a in page.locator("#downloads a").all()]
    assert len(hrefs) == 2 and all("-s1-" in href for href in hrefs)
    assert page.locator("#difference-note").inner_text() == first_note
    assert wait_heads(page, "L1H0") is None and field(page, "PAG scale").input_value() == "3"
    shot(page, "history", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_5_the_page_starts_with_a_quality_preset_or_says_there_are_no_heads(page_at, toy_server, viewport):
    page = page_at(viewport)  # tiny-sd3 ships no preset searched for quality
    page.locator("#head-picker .hh-hint", has_text="no heads: guided = unguided").wait_for(timeout=10000)
    generate(page)
    page.locator("#difference-note", has_text="no heads: guided = unguided").wait_for(timeout=10000)
    browser = page.context.browser
    toy = browser.new_context(viewport=viewport).new_page()
    toy.goto(toy_server)
    toy.locator("#head-picker table").wait_for(timeout=30000)
    heads = str(load_preset("toy-shapes-fidelity")["heads"])
    assert toy.locator("#heads textarea, #heads input").first.input_value() == heads
    assert toy.get_by_label("Preset").input_value() == "toy-shapes-fidelity"
    assert toy.locator("#head-picker td.on").count() == len(heads.split(","))
    generate(toy)
    note = toy.locator("#difference-note").inner_text()
    assert "no heads" not in note and float(re.search(r"mean change ([\d.]+)", note)[1]) > 0
    shot(toy, "start", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_6_progress_counts_one_images_steps_and_stop_takes_a_queued_job_out(page_at, server, viewport):
    _, studio, _ = server
    first, second = page_at(viewport), page_at(viewport)  # two browser sessions
    field(first, "Steps").fill("50")
    field(second, "Steps").fill("50")
    with slowed(studio.pipe.transformer, 0.06) as calls:
        first.locator("#generate").click()
        first.wait_for_function("() => document.querySelector('#generate').disabled", timeout=10000)
        deadline = time.time() + 30
        while len(calls) < 5 and time.time() < deadline:
            time.sleep(0.05)
        seen = set()
        for _ in range(5):
            text = first.locator("#generate-status").inner_text()
            seen |= {int(total) for total in re.findall(r"\d+\s*/\s*(\d+)", text)}
            first.wait_for_timeout(150)
        assert seen == {50}, seen  # the steps of one image, not unguided and guided counted apart
        for selector in ("#compare", "#history", "#difference"):  # no overlay over the results
            assert first.locator(f"{selector} .generating, {selector} .pending").count() == 0
        second.locator("#generate").click()
        second.locator("#generate-status", has_text=re.compile("queue", re.I)).wait_for(timeout=10000)
        position = second.locator("#generate-status").get_by_text(re.compile(r"queue: \d+/\d+")).bounding_box()
        box = second.locator("#generate-status").bounding_box()
        assert box["y"] <= position["y"] and position["y"] + position["height"] <= box["y"] + box["height"] + 1
        assert second.locator("#generate").is_disabled()
        shot(second, "queue", viewport)
        second.locator("#stop-images").click()
        toast(second, "Stopped")
        second.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=10000)
        first.locator("#history img").first.wait_for(timeout=60000)
        finished = len(calls)
        second.wait_for_timeout(2500)
        assert len(calls) == finished and second.locator("#history img").count() == 0  # the queued job never ran


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_7_search_stop_ends_the_batch_in_flight_and_resume_shows_the_runs_own_form(page_at, server, viewport):
    _, studio, workspace = server
    page = page_at(viewport)
    name = f"artist-run-{viewport['width']}"
    page.get_by_role("tab", name="Search").click()
    # the run list above the heat map, whole
    runs, heatmap = page.locator("#runs").bounding_box(), page.locator("#heatmap").bounding_box()
    assert runs["y"] + runs["height"] <= heatmap["y"] + 1
    assert page.locator("#runs").evaluate(
        "g => [...g.querySelectorAll('th')].every(th => th.getBoundingClientRect().right <= g.getBoundingClientRect().right + 1)")
    page.locator("#run-name textarea, #run-name input").first.fill("")
    page.get_by_role("button", name="Resume the chosen run").click()
    toast(page, "Resume: choose a run in the list first")
    field(page, "Steps").fill("40")
    page.get_by_label("Content prompts").fill("a parrot\na boat")
    page.get_by_label("Seeds").fill("0")
    page.locator("#run-name textarea, #run-name input").first.fill(name)
    with slowed(studio.pipe.transformer, 0.05) as calls:
        page.get_by_role("button", name="Search", exact=True).click()
        wait_calls(calls, 4)
        page.locator("#stop-search").click()  # within the first batch: nothing scored, nothing kept
        at_stop = len(calls)
        page.locator("#search-status", has_text="stopped before its first batch was scored").wait_for(timeout=30000)
        assert len(calls) - at_stop <= 3  # within steps of the click, not after the batch's 40 steps
        assert not (workspace / name).exists()
        page.get_by_role("button", name="Search", exact=True).click()  # again, stopped in its second batch
        page.locator("#search-status", has_text="best head so far").wait_for(timeout=60000)
        wait_calls(calls, len(calls) + 4)
        page.locator("#stop-search").click()
        at_stop = len(calls)
        page.locator("#search-status", has_text="stopped — resumable: 8 of 24 images scored").wait_for(timeout=30000)
        assert len(calls) - at_stop <= 3
    # the form is changed, the run chosen and resumed: the form shows the run's own prompts, seeds and k
    page.get_by_label("Content prompts").fill("something else")
    page.get_by_label("Seeds").fill("9")
    field(page, "k").fill("3")
    page.locator("#runs").get_by_text(name, exact=True).locator("visible=true").first.click()
    page.wait_for_function("n => [...document.querySelectorAll('#run-name textarea, #run-name input')].some(e => e.value === n)",
                           arg=name, timeout=10000)
    page.get_by_role("button", name="Resume the chosen run").click()
    wait_value(page, "Content prompts", "a parrot\na boat")
    assert page.get_by_label("Seeds").input_value() == "0" and field(page, "k").input_value() == "2"
    page.locator("#search-status", has_text="done").wait_for(timeout=180000)
    shot(page, "search", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_8_width_and_height_in_pixels_with_the_models_range(page_at, viewport):
    page = page_at(viewport)
    page.get_by_text("16–384 px, a multiple of 4").first.wait_for(timeout=10000)  # tiny-sd3's reach, in pixels
    field(page, "Width").fill("2048")
    page.locator("#generate").click()
    toast(page, "Width: 2048 px is more than this model takes (16–384 px, a multiple of 4)")
    field(page, "Width").fill("30")
    page.locator("#generate").click()
    toast(page, "Width: 30 px is not a multiple of 4 px (try 28 or 32)")
    field(page, "Width").fill("48")
    field(page, "Height").fill("32")
    generate(page)
    data = served(page, page.locator("#compare img").nth(1).get_attribute("src"))
    assert Image.open(io.BytesIO(data)).size == (48, 32)
    assert parse_infotext(png_text(data)["parameters"])[2]["Size"] == "48x32"
    assert "--size 48x32" in page.locator("#cli textarea, #cli input").first.input_value()
    shot(page, "size", viewport)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_10_batch_atlas_and_xy_galleries(page_at, viewport):
    page = page_at(viewport)
    field(page, "Seed batch").fill("3")
    page.locator("#heads textarea, #heads input").first.fill("L1H0")
    wait_heads(page, "L1H0")
    generate(page, count=3)
    page.locator("#batch img").nth(2).wait_for(timeout=30000)
    page.wait_for_function("() => [...document.querySelectorAll('#batch img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#batch .caption-label").all_inner_texts() == ["seed 0", "seed 1", "seed 2"]
    assert all(whole_in_gallery(page, "#batch")) and all(whole_in_gallery(page, "#history"))
    page.locator("#batch img").nth(2).click()  # seed 2 into the compare view
    page.wait_for_function("() => /--seed 2 /.test(document.querySelector('#cli textarea, #cli input').value)",
                           timeout=15000)
    assert shown_settings(page, "#compare img", 1)[1]["seed"] == 2
    shot(page, "batch", viewport)
    # the atlas: the unguided image first, whole tiles, a click adds a head and a second click removes it
    page.get_by_role("tab", name="Head atlas").click()
    page.get_by_role("button", name="Run atlas").click()
    page.locator("#atlas img").nth(4).wait_for(timeout=60000)
    page.wait_for_function("() => [...document.querySelectorAll('#atlas img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#atlas .caption-label").all_inner_texts() == ["unguided", "L0H0", "L0H1", "L0H2", "L0H3"]
    assert all(whole_in_gallery(page, "#atlas"))
    page.locator("#atlas img").nth(2).click()
    wait_heads(page, "L1H0,L0H1")
    assert page.locator("#atlas .preview").count() == 0  # no lightbox
    page.locator("#atlas img").nth(2).click()
    wait_heads(page, "L1H0")
    shot(page, "atlas", viewport)
    # the XY grid's A1111 axes
    page.get_by_role("tab", name="XY grid").click()
    for axis, values, labels in (("Steps", "1,2", [1, 2]), ("CFG", "1,3", [1.0, 3.0]),
                                 ("Prompt S/R", "fox,cat", ["fox", "cat"]),
                                 ("Interval", "0-0.5,0.5-1", [[0.0, 0.5], [0.5, 1.0]])):
        page.get_by_label("Columns vary").click()
        page.get_by_role("option", name=axis, exact=True).click()
        render_xy(page, "none\nL1", values)
        page.wait_for_function("() => !document.querySelector('#xy-note .pending, #xy-note .generating')")
        page.wait_for_function("a => { const n = document.querySelector('#xy-note'); return n && n.innerText.includes(a); }",
                               arg=f"values of {axis}", timeout=30000)
        _, meta = shown_settings(page, "#xy-grid img")
        assert (meta["xy"]["axis"], meta["xy"]["values"]) == (axis, labels)
        grid = np.asarray(Image.open(io.BytesIO(served(page, page.locator("#xy-grid img").get_attribute("src")))))
        from headhunter.ui.xy import LABEL_HEIGHT, LABEL_WIDTH

        cells = [grid[LABEL_HEIGHT + 128:, LABEL_WIDTH + c * 128 : LABEL_WIDTH + (c + 1) * 128] for c in range(2)]
        assert not np.array_equal(*cells), axis  # the guided row's columns differ
    shot(page, "xy", viewport)
