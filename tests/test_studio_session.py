"""The studio's working session without a browser: seed batches and history, the XY grid (checked against the
pipeline called directly), settings read back from its PNGs, Stop between denoising steps, and resuming a search
from the workspace's run list."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")

from headhunter.metadata import read_settings  # noqa: E402
from headhunter.search import HeadHunter  # noqa: E402
from headhunter.testing import tiny_pipeline  # noqa: E402
from headhunter.ui import Settings, Studio  # noqa: E402
from headhunter.ui.settings import FIELDS  # noqa: E402
from headhunter.ui.xy import LABEL_HEIGHT, LABEL_WIDTH  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path_factory.mktemp("workspace"))


def direct(pipe, prompt, seed, heads, **kwargs):
    """One image from the pipeline itself, as a user's own script would make it."""
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), pag_heads=heads, **kwargs).images[0]


def close(a, b):
    diff = np.abs(np.asarray(a.convert("RGB")).astype(int) - np.asarray(b.convert("RGB")).astype(int))
    return diff.max() <= 1 and (diff > 0).mean() < 0.01  # batching moves a pixel across an 8-bit level at most


def test_a_seed_batch_fills_the_history_and_a_click_restores_it(studio):
    panel = Settings("a red fox", seed=7, steps=2, width=32, height=32, pag_scale=2.0, heads="L1H0")
    *_, history, strip, _ = studio.generate(panel, batch=3)
    assert [entry["settings"][2] for entry in history] == [9, 8, 7]  # newest first
    assert [caption for _, caption in strip] == ["seed 9 · L1H0", "seed 8 · L1H0", "seed 7 · L1H0"]
    for entry in history:  # each guided image is what the pipeline makes for its seed
        seed = entry["settings"][2]
        reference = direct(studio.pipe, "a red fox", seed, "L1H0", num_inference_steps=2, height=32, width=32,
                           pag_scale=2.0, guidance_scale=1.0)
        assert close(Image.open(entry["files"][1]), reference)
    later = Settings("a boat", seed=1, steps=2, width=32, height=32, pag_scale=5.0, softness=0.5, heads="L0")
    *_, history, strip, _ = studio.generate(later, history=history)
    assert len(history) == 4 and strip[0][1] == "seed 1 · L0"
    restored = studio.restore(history, 2)  # the seed-8 fox
    assert Settings(*restored[:len(FIELDS)]) == Settings("a red fox", seed=8, steps=2, width=32, height=32, pag_scale=2.0,
                                                         heads="L1H0")
    unguided, guided = restored[len(FIELDS)]
    assert np.array_equal(np.asarray(guided), np.asarray(Image.open(history[2]["files"][1]).convert("RGB")))
    with pytest.raises(gr.Error, match="Seed batch"):
        studio.generate(panel, batch=17)


def test_a_png_from_the_studio_loads_its_settings_back(studio):
    panel = Settings("a lighthouse", negative="fog", seed=3, steps=3, width=32, height=32, cfg=2.0, pag_scale=4.0, adaptive=0.5,
                     softness=0.25, target="uniform", scope="joint", start=0.1, end=0.9, heads="L0H1,L2@0.5")
    files = studio.generate(panel)[5]
    assert Settings(*studio.settings_from_png(files[1])) == panel
    assert Settings(*studio.settings_from_png(files[0])).heads == ""  # the unguided image: no heads
    plain = files[0].replace("unguided", "plain")
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(gr.Error, match="carries no settings") as err:
        studio.settings_from_png(plain)
    assert "/" not in str(err.value)  # the server path is not echoed


def test_the_xy_grid_is_labelled_sized_rows_by_columns_and_each_cell_is_its_own_image(studio):
    panel = Settings("a red fox", seed=2, steps=2, width=32, height=32, pag_scale=3.0, softness=1.0)
    grid, path, note = studio.xy(panel, "none\nL0\nL1H0,L2H3", "PAG scale", "1,4")
    cell = 128  # 32 px enlarged ×4, pixel-exactly
    assert grid.size == (LABEL_WIDTH + 2 * cell, LABEL_HEIGHT + 3 * cell)
    assert note == "3 head sets × 2 values of PAG scale: 6 images"
    rows = [None, "L0", "L1H0,L2H3"]
    for r, heads in enumerate(rows):
        for c, scale in enumerate((1.0, 4.0)):
            reference = direct(studio.pipe, "a red fox", 2, heads, num_inference_steps=2, height=32, width=32,
                               pag_scale=scale, guidance_scale=1.0)
            box = (LABEL_WIDTH + c * cell, LABEL_HEIGHT + r * cell, LABEL_WIDTH + (c + 1) * cell, LABEL_HEIGHT + (r + 1) * cell)
            tile = grid.crop(box).resize((32, 32), Image.NEAREST)
            assert close(tile, reference), (heads, scale)
    # labels are drawn: dark pixels in the label strips of every row and column
    pixels = np.asarray(grid.convert("L"))
    assert all((pixels[LABEL_HEIGHT + r * cell : LABEL_HEIGHT + r * cell + 20, :LABEL_WIDTH] < 128).any() for r in range(3))
    assert all((pixels[:LABEL_HEIGHT, LABEL_WIDTH + c * cell : LABEL_WIDTH + (c + 1) * cell] < 128).any() for c in range(2))
    meta = read_settings(path)
    assert meta["xy"] == {"rows": ["no heads (unguided)", "L0", "L1H0,L2H3"], "axis": "PAG scale", "values": [1.0, 4.0]}
    seeds, _, _ = studio.xy(panel, "L1", "Seed", "5,6,7")
    assert seeds.size == (LABEL_WIDTH + 3 * cell, LABEL_HEIGHT + cell)
    for bad, message in (("1,x", "numbers"), ("", "at least one")):
        with pytest.raises(gr.Error, match=message):
            studio.xy(panel, "L1", "PAG scale", bad)
    with pytest.raises(gr.Error, match="softness must be in"):
        studio.xy(panel, "L1", "Softness", "0.5,2")
    with pytest.raises(gr.Error, match="at most 8"):
        studio.xy(panel, "\n".join(["L1"] * 9), "Seed", "1")


class SlowSteps:
    """Each transformer call sleeps, so a Stop lands in the middle of the denoising loop."""

    def __init__(self, pipe, seconds):
        self.calls = 0
        self.handle = pipe.transformer.register_forward_pre_hook(self.hook)
        self.seconds = seconds

    def hook(self, module, args):
        self.calls += 1
        time.sleep(self.seconds)

    def remove(self):
        self.handle.remove()


def test_stop_ends_a_generation_between_steps_and_only_this_sessions(studio):
    me, other = type("R", (), {"session_hash": "me"})(), type("R", (), {"session_hash": "other"})()
    slow = SlowSteps(studio.pipe, 0.05)
    errors = []

    def run():
        try:
            studio.generate(Settings("a red fox", steps=200, width=32, height=32), request=me)
        except gr.Error as err:
            errors.append(str(err.message if hasattr(err, "message") else err))

    worker = threading.Thread(target=run)
    started = time.perf_counter()
    worker.start()
    try:
        while slow.calls < 5:
            time.sleep(0.01)
        studio.stop_images(other)  # someone else's Stop does nothing here
        time.sleep(0.2)
        assert worker.is_alive()
        studio.stop_all(me)  # what closing the page does (the Stop button stops "images" only; browser-tested)
        worker.join(timeout=10)
    finally:
        slow.remove()
    assert not worker.is_alive() and time.perf_counter() - started < 10
    assert slow.calls < 40  # of 200 steps
    assert errors and errors[0].startswith("stopped at step ") and errors[0].endswith("of 200; the last result is kept")


def test_resume_from_the_run_list_ends_with_the_heads_of_an_uninterrupted_run(studio, tmp_path):
    panel = Settings("x", steps=2, width=32, height=32, pag_scale=3.0)
    me = type("R", (), {"session_hash": "searcher"})()
    updates = []
    searching = studio.search("colorfulness", "", "a parrot\na boat", "0,1", 2, 2, panel, run_name="my-run", request=me)
    worker = threading.Thread(target=lambda: updates.extend(searching))
    slow = SlowSteps(studio.pipe, 0.01)
    worker.start()
    try:
        run_dir = studio.workspace.root / "my-run"
        while not list(run_dir.glob("scores*.jsonl")):
            time.sleep(0.02)
        studio.stop_search(me)
        worker.join(timeout=60)
    finally:
        slow.remove()
    assert updates[-1][0].startswith("**my-run** stopped — resumable")
    [row] = [r for r in studio.runs_table() if r[0] == "my-run"]
    assert row[1:3] == ["stopped — resumable", "colorfulness"] and row[3] == "—"
    live_heatmap, ranking = updates[-1][1], updates[-1][2]
    assert isinstance(live_heatmap, Image.Image) and ranking and ranking[0][2] >= 1  # the ranking so far
    finals = list(studio.resume("my-run"))
    assert finals[-1][0].startswith("**my-run** done")
    resumed = finals[-1][3]
    # the same search, uninterrupted, straight from the library
    reference = HeadHunter(studio.pipe, "colorfulness", ["a parrot", "a boat"], [0, 1], 2, 2, tmp_path / "reference",
                           num_inference_steps=2, height=32, width=32, pag_scale=3.0, guidance_scale=1.0,
                           model_name="tiny-sd3", progress=False).run()
    assert resumed == str(reference.selected)
    [row] = [r for r in studio.runs_table() if r[0] == "my-run"]
    assert row[1] == "done" and row[3] == resumed and row[4] == "88 / 88"
    # a run name that exists with other settings is refused, not overwritten
    with pytest.raises(gr.Error, match="different search"):
        list(studio.search("contrast", "", "a parrot", "0", 1, 1, panel, run_name="my-run"))


def test_the_default_studio_model_is_the_trained_toy_and_its_snippet_and_command_line_remake_its_image(tmp_path):
    """`headhunter ui` opens on toy-shapes: a grammar prompt, its 20 steps and 32 px, its presets only; the page's
    Python snippet (run as is) and its `headhunter generate` line make the guided image the page shows."""
    from headhunter.testing import TOY_PROMPT, toy_pipeline
    from headhunter.ui.app import launch

    assert __import__("inspect").signature(launch).parameters["model"].default == "toy-shapes"
    studio = Studio(toy_pipeline(), "toy-shapes", tmp_path / "workspace")
    assert (studio.defaults.prompt, studio.defaults.steps, studio.defaults.width, studio.defaults.height) == \
        (TOY_PROMPT, 20, 32, 32)
    assert studio.preset_names() and all(name.startswith("toy-shapes-") for name in studio.preset_names())
    panel = replace_settings(studio.defaults, seed=4, heads=studio.preset_names()[0], pag_scale=3.0)
    (_, guided), _, _, python, cli, *_ = studio.generate(panel)
    png = assert_snippet_and_command_line_remake(python, cli, guided, tmp_path / "cli")
    assert read_settings(png)["max_sequence_length"] == 1


def test_chroma_in_the_studio_its_snippet_and_command_line_remake_its_image(tmp_path):
    """Chroma runs in the studio like SD3 (its CFG is guidance_scale, with the negative prompt); the page's Python
    snippet and `headhunter generate` line make the image the page shows, also for a model loaded from a folder
    (the snippet then names Chroma's pipeline class)."""
    from diffusers import ChromaPipeline

    from headhunter.testing import build_pipeline, tiny_components

    folder = tmp_path / "chroma"
    build_pipeline(ChromaPipeline, tiny_components("tiny-chroma")).save_pretrained(folder)
    for name in ("tiny-chroma", str(folder)):
        pipe = tiny_pipeline("tiny-chroma")
        studio = Studio(pipe, name, tmp_path / "workspace")
        panel = replace_settings(studio.defaults, steps=2, width=32, height=32, seed=2, heads="L1H0,L3H1@0.5", pag_scale=3.0,
                                 cfg=2.0, negative="blurry")
        (_, guided), _, _, python, cli, *_ = studio.generate(panel)
        loader = "tiny_pipeline('tiny-chroma')" if name == "tiny-chroma" else "HeadHunterChromaPipeline.from_pretrained"
        assert loader in python and "guidance_scale=2.0" in python
        out = tmp_path / f"cli-{Path(name).name}"
        png = assert_snippet_and_command_line_remake(python, cli, guided, out)
        assert read_settings(png)["guidance_scale"] == 2.0
    unguided = direct(pipe, panel.prompt, 2, None, **panel.call_kwargs("chroma", {}))
    assert not close(unguided, guided)  # the heads change the image


def assert_snippet_and_command_line_remake(python, cli, image, out):
    """Run the studio's Python snippet as is and its `headhunter generate` line; both must make ``image``. Returns
    the command line's PNG."""
    import shlex

    from headhunter.cli import main

    namespace = {}
    exec(compile(python, "snippet", "exec"), namespace)
    assert close(namespace["image"], image)
    assert main(shlex.split(cli)[1:] + ["--out", str(out)]) == 0
    png = next(out.glob("*.png"))
    assert close(Image.open(png), image)
    return png


def replace_settings(settings, **changes):
    from dataclasses import replace

    return replace(settings, **changes)
