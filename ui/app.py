"""The studio's page: the left panel (prompt, heads, settings, presets) and the Generate, Head atlas, XY grid and
Search tabs, wired to :class:`~headhunter.ui.studio.Studio`."""

from __future__ import annotations

import functools
import html
import inspect
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.processing_utils import encode_pil_to_bytes
from PIL import Image

from headhunter.heads import HeadSet

from .page import PAGE_JS
from .picker import PICKER_CSS, PICKER_JS, picker_html
from .settings import FIELDS, Settings
from .studio import BATCH_LIMIT, SCOPES, TARGETS, Studio
from .xy import AXES

__all__ = ["Studio", "build_app", "launch"]

CSS = """
#compare.pixelated img, #difference img, #history img, #batch img, #atlas img { image-rendering: pixelated; }
/* galleries of small images: whole images (no crop), a fixed number of columns whatever the count, captions whole */
#history img, #batch img, #atlas img { object-fit: contain !important; }
#history .grid-container { grid-template-columns: repeat(6, minmax(0, 1fr)) !important; }
#batch .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
#atlas .grid-container { grid-template-columns: repeat(5, minmax(0, 1fr)) !important; }
#history .grid-container, #batch .grid-container, #atlas .grid-container { padding-top: 30px !important; }
/* the line under Generate holds the progress bar and the queue position: room for Gradio's overlay */
#generate-status { min-height: 64px; }
#history .caption-label, #batch .caption-label, #atlas .caption-label { white-space: normal !important;
  overflow: visible !important; max-width: 100% !important; font-size: 11px; }
"""


def _toast(err: gr.Error) -> None:
    """The message as a warning toast, as text: Gradio renders a toast's HTML, and the heads help's ``L<layer>H<head>``
    would lose its placeholders."""
    gr.Warning(html.escape(str(getattr(err, "message", err)), quote=False))


def shown_as_files(value: Any, folder: Path) -> Any:
    """``value`` (an event's outputs) with every PIL image replaced by a PNG file of its own in a new folder under
    ``folder``, its text chunks (the settings) kept. Gradio caches a PIL image under the hash of its bytes and
    rewrites that file in place, so two sessions showing the same image at once (the unguided image of the same
    prompt and seed) could each be served the other's half-written file; a file is copied into the cache under a
    temporary name and renamed."""
    made: dict[int, str] = {}
    call: list[Path] = []  # this call's folder, made with its first image (most events return none)

    def convert(item: Any) -> Any:
        if isinstance(item, Image.Image):
            if id(item) not in made:
                if not call:
                    call.append(Path(tempfile.mkdtemp(dir=folder)))
                path = call[0] / f"{len(made)}.png"
                path.write_bytes(encode_pil_to_bytes(item, "png"))
                made[id(item)] = str(path)
            return made[id(item)]
        if isinstance(item, (tuple, list)):
            return type(item)(convert(x) for x in item)
        if isinstance(item, dict) and item.get("__type__") == "update" and "value" in item:
            return {**item, "value": convert(item["value"])}
        return item

    return convert(value)


def keeping_last_result(fn: Callable, outputs: int, shown: Path | None = None) -> Callable:
    """``fn`` for an event whose outputs must survive a mistake: a ``gr.Error`` becomes a warning toast with the
    message, and every output keeps what it showed (instead of turning into an error badge). With ``shown``, the
    images it returns reach Gradio as files there (:func:`shown_as_files`)."""

    def kept() -> Any:
        return tuple(gr.skip() for _ in range(outputs)) if outputs > 1 else gr.skip()

    def files(value: Any) -> Any:
        return value if shown is None else shown_as_files(value, shown)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Any:
            try:
                for value in fn(*args, **kwargs):
                    yield files(value)
            except gr.Error as err:
                _toast(err)
                yield kept()

        return streaming

    @functools.wraps(fn)
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return files(fn(*args, **kwargs))
        except gr.Error as err:
            _toast(err)
            return kept()

    return handler


def with_settings(fn: Callable, before: tuple[str, ...] = (), after: tuple[str, ...] = (), generator: bool = False) -> Callable:
    """Expose ``fn(*before, settings, *after, request=, progress=)`` to Gradio, which passes one positional value per
    input component: the inputs are ``before``, the left panel's fields (:data:`FIELDS`), then ``after``."""
    split = len(before), len(before) + len(FIELDS)

    def call(args: tuple) -> Any:
        *values, request, progress = args
        settings = Settings(*values[split[0] : split[1]])
        return fn(*values[: split[0]], settings, *values[split[1] :], request=request, progress=progress)

    if generator:
        def handler(*args: Any) -> Any:
            yield from call(args)
    else:
        def handler(*args: Any) -> Any:
            return call(args)

    # Gradio reads the parameters to inject the session's request and a progress tracker
    parameter = functools.partial(inspect.Parameter, kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
    handler.__signature__ = inspect.Signature(
        [parameter(name) for name in (*before, *FIELDS, *after)]
        + [parameter("request", annotation=gr.Request), parameter("progress", default=gr.Progress())])
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = fn.__name__
    return handler


def build_app(studio: Studio) -> gr.Blocks:
    layout, defaults = studio.layout, studio.defaults
    shown = tempfile.TemporaryDirectory(prefix="headhunter-shown-")  # removed with the app (it holds a reference)
    guarded = functools.partial(keeping_last_result, shown=Path(shown.name))
    with gr.Blocks(title="headhunter studio") as app:
        gr.HTML(f"<style>{CSS}</style>", padding=False)  # page-wide rules (Gradio 6 takes css= only in launch)
        gr.HTML("", js_on_load=PAGE_JS, padding=False, elem_id="page-keys")
        gr.Markdown(f"## headhunter studio · **{studio.model_name}** — {layout.describe()}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                prompt = gr.Textbox(label="Prompt", value=defaults.prompt, lines=1)
                # Generate under the prompt, as in A1111: in reach at any width, whatever tab is open
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", scale=3, elem_id="generate")
                    stop_images = gr.Button("Stop", scale=1, elem_id="stop-images")
                progress_box = gr.Markdown("Enter in the prompt, or Ctrl+Enter anywhere, generates",
                                           elem_id="generate-status")
                heads = gr.Textbox(label="Heads", value=defaults.heads, placeholder="L13H17, L1H10@0.5 — or click the grid",
                                   elem_id="heads")
                picker = gr.HTML(picker_html(layout, HeadSet.parse(defaults.heads)), css_template=PICKER_CSS,
                                 js_on_load=PICKER_JS, elem_id="head-picker", apply_default_css=False)
                with gr.Row():
                    preset = gr.Dropdown(studio.preset_names(), label="Preset", value=studio.default_preset, scale=3)
                    use_preset = gr.Button("Use preset", scale=1)
                # no Gradio minimum/maximum on these fields (sliders included): Gradio's own check fails before the
                # studio's and turns every output into an error badge; the studio names the field and keeps the
                # last result
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=defaults.seed, precision=0)
                        dice = gr.Button("Random seed", elem_id="random-seed", scale=0, min_width=120)
                        batch = gr.Number(label="Seed batch", value=1, precision=0,
                                          info=f"seeds from Seed on, up to {BATCH_LIMIT}")
                    with gr.Row():
                        steps = gr.Number(label="Steps", value=defaults.steps, precision=0)
                        width = gr.Number(label="Width", value=defaults.width, precision=0, info=studio.size_help())
                        height = gr.Number(label="Height", value=defaults.height, precision=0, info=studio.size_help())
                    with gr.Row():
                        cfg = gr.Number(label="True CFG" if studio.flux else "CFG", value=defaults.cfg,
                                        info="classifier-free guidance; 1 is off (the negative prompt needs > 1)")
                        flux_guidance = gr.Number(label="FLUX guidance", value=defaults.flux_guidance,
                                                  visible=studio.flux, info="FLUX's distilled guidance scale")
                        pag_scale = gr.Number(label="PAG scale", value=defaults.pag_scale)
                        adaptive = gr.Number(label="Adaptive scale", value=defaults.adaptive,
                                             info="lowers the PAG scale as steps go; 0 is off")
                    with gr.Row():
                        softness = gr.Number(label="Softness", value=defaults.softness, step=0.05,
                                             info="0 to 1: u for heads without their own @u")
                        target = gr.Dropdown(TARGETS, value=defaults.target, label="Target")
                        scope = gr.Dropdown(SCOPES, value=defaults.scope, label="Scope")
                    with gr.Row():
                        start = gr.Number(label="Interval start", value=defaults.start, step=0.05,
                                          info="0 to 1: guided from this fraction of the steps")
                        end = gr.Number(label="Interval end", value=defaults.end, step=0.05, info="0 to 1: … to this one")
                    with gr.Row():
                        mode = gr.Dropdown(["cond", "uncond"], value=defaults.mode, label="Mode",
                                           info="cond: a perturbed pass of its own; uncond: CFG's unconditional "
                                                "pass is perturbed instead (CFG > 1; 2 passes a step)")
                        reuse = gr.Number(label="Reuse", value=defaults.reuse, precision=0,
                                          info="the perturbed pass every k-th guided step, reused between "
                                               "(1 exact; see the README's cheap modes)")
                    mode_cost = gr.Markdown(studio.mode_cost(defaults), elem_id="mode-cost")
                    negative = gr.Textbox(label="Negative prompt", value=defaults.negative)
                png = gr.File(label="Load settings: drop a PNG anywhere on the page (headhunter, A1111, ComfyUI)",
                              file_types=[".png"], type="filepath", elem_id="load-png", height=90)
                with gr.Accordion("Save, export, import presets", open=False):
                    with gr.Row():
                        preset_name = gr.Textbox(label="Preset name", placeholder="letters, digits, - and _")
                        preset_description = gr.Textbox(label="Description")
                    with gr.Row():
                        save = gr.Button("Save in the workspace")
                        export = gr.Button("Export file")
                    exported = gr.File(label="Exported preset", elem_id="exported-preset")
                    imported = gr.File(label="Import a preset file (.json)", file_types=[".json"], type="filepath",
                                       elem_id="import-preset")
            with gr.Column(scale=6, min_width=360):
                with gr.Tabs() as tabs:
                    with gr.Tab("Generate", id="generate"):
                        # PNG, not the default WebP: what the page shows is what the pipeline made, with its
                        # settings. Both images keep the same box (no fixed height: a fixed one offset the halves),
                        # and small ones are enlarged as pixels.
                        compare = gr.ImageSlider(label="Unguided | guided", type="pil", elem_id="compare",
                                                 max_height=420, format="png",
                                                 elem_classes=["pixelated"] if max(defaults.width, defaults.height) < 256
                                                 else None)
                        batch_pairs = gr.Gallery(label="Seed batch: unguided | guided per seed (click one to compare)",
                                                 columns=4, object_fit="contain", allow_preview=False, visible=False,
                                                 elem_id="batch", format="png", height="auto")
                        history = gr.State([])
                        strip = gr.Gallery(label="This session (click to restore the run)", columns=6, height=170,
                                           object_fit="contain", allow_preview=False, elem_id="history", format="png")
                        diff = gr.Image(label="Absolute difference", type="pil", elem_id="difference", height=240,
                                        format="png")
                        diff_note = gr.Markdown(elem_id="difference-note")
                        downloads = gr.File(label="Download: unguided and guided PNG, settings in their metadata",
                                            file_count="multiple", elem_id="downloads")
                        python = gr.Code(label="Python", language="python", elem_id="python")
                        cli = gr.Textbox(label="Command line", elem_id="cli")
                    with gr.Tab("Head atlas", id="atlas"):
                        layer = gr.Number(label="Layer", value=0, precision=0)
                        with gr.Row():
                            atlas_run = gr.Button("Run atlas", variant="primary")
                            atlas_stop = gr.Button("Stop")
                        atlas_cost = gr.Markdown(studio.atlas_cost(0), elem_id="atlas-cost")
                        gallery = gr.Gallery(label="The unguided image, then each head of the layer perturbed alone "
                                             "(click a head to add it, again to remove it)", columns=5,
                                             object_fit="contain", allow_preview=False, height="auto",
                                             elem_id="atlas", format="png")
                    with gr.Tab("XY grid", id="xy"):
                        xy_rows = gr.Textbox(label="Rows: one head set per line (a spec, a preset name, or none)",
                                             lines=3, value="none\nL0\nL1H0,L1H1", elem_id="xy-rows")
                        with gr.Row():
                            xy_axis = gr.Dropdown(list(AXES), value="PAG scale", label="Columns vary")
                            xy_values = gr.Textbox(label="Column values", value="1,3,5", elem_id="xy-values",
                                                   info="comma-separated; Prompt S/R: the text to replace, then its "
                                                        "replacements; Interval: start-end, e.g. 0-0.5,0.5-1")
                        with gr.Row():
                            xy_run = gr.Button("Render grid", variant="primary")
                            xy_stop = gr.Button("Stop")
                        xy_image = gr.Image(label="XY grid", type="pil", format="png", elem_id="xy-grid")
                        xy_note = gr.Markdown(elem_id="xy-note")
                        xy_file = gr.File(label="Download the grid (PNG with its settings)", elem_id="xy-file")
                    with gr.Tab("Search", id="search"):
                        search_uses = gr.Markdown(studio.search_uses(defaults), elem_id="search-uses")
                        with gr.Row():
                            objective = gr.Dropdown(studio.objectives(), value=studio.search_defaults[0],
                                                    label="Objective", allow_custom_value=True,
                                                    info="a registered scorer, or a spec such as clip:golden hour")
                            style = gr.Textbox(label="Style", value="")
                            run_name = gr.Textbox(label="Run name", placeholder="new: leave empty for a dated name",
                                                  elem_id="run-name")
                        contents = gr.Textbox(label="Content prompts", lines=3, value=studio.search_defaults[1],
                                              elem_id="contents")
                        with gr.Row():
                            seeds = gr.Textbox(label="Seeds", value="0,1", elem_id="search-seeds")
                            top_k = gr.Number(label="k", value=2, precision=0, elem_id="top-k")
                            rounds = gr.Number(label="Rounds", value=1, precision=0, elem_id="rounds")
                        search_cost = gr.Markdown(studio.search_cost(contents.value, seeds.value, top_k.value,
                                                                     rounds.value), elem_id="search-cost")
                        with gr.Row():
                            search_run = gr.Button("Search", variant="primary")
                            search_stop = gr.Button("Stop", elem_id="stop-search")
                            resume = gr.Button("Resume the chosen run", elem_id="resume")
                        status = gr.Markdown(elem_id="search-status")
                        runs = gr.Dataframe(studio.runs_table(), headers=["run", "status", "objective", "heads so far",
                                                                          "images"],
                                            label="Runs in the workspace (click one to choose it)", interactive=False,
                                            elem_id="runs", wrap=True, column_widths=["30%", "14%", "16%", "22%", "18%"])
                        with gr.Row():
                            heatmap = gr.Image(label="Heat map of the latest round (layers × heads)", type="pil",
                                               format="png", elem_id="heatmap", scale=3)
                            ranking = gr.Dataframe(headers=["head", "score", "pairs"], label="Ranking",
                                                   interactive=False, elem_id="ranking", scale=2, max_height=320)
                        with gr.Row():
                            found = gr.Textbox(label="Selected heads", scale=3)
                            use_found = gr.Button("Use these heads", scale=1)
                            export_run = gr.Button("Export the chosen run", scale=1, elem_id="export-run")
                        exported_run = gr.File(label="Exported run (a zip of the folder `headhunter export` writes: "
                                               "HeadHunterGuidance.from_pretrained and pag_heads load it)",
                                               elem_id="exported-run")

        settings = [prompt, negative, seed, steps, width, height, cfg, flux_guidance, pag_scale, adaptive, softness,
                    target, scope, start, end, heads, reuse, mode]
        panel = [c for c in settings if c is not heads]  # the fields whose changes redraw the notes below
        assert len(settings) == len(FIELDS)
        instant = dict(concurrency_limit=None, show_progress="hidden")

        # the head picker and the Heads field stay in sync: every change of the field (typing, pasting, a preset,
        # a click) redraws the grid; a click edits the field
        def pick(text: str, evt: gr.EventData) -> str:
            data = getattr(evt, "_data", None) or {}
            return studio.pick(text, data.get("layer", -1), data.get("head"))

        picker.click(guarded(pick, 1), [heads], [heads], **instant)
        use_preset.click(guarded(studio.apply_preset, 3), [preset], [heads, pag_scale, softness], **instant)
        save.click(guarded(studio.save_preset, 1),
                   [preset_name, preset_description, heads, pag_scale, softness], [preset], **instant)
        export.click(guarded(studio.export_preset, 1),
                     [preset_name, preset_description, heads, pag_scale, softness], [exported], **instant)
        imported.upload(guarded(studio.import_preset, 4), [imported], [heads, pag_scale, softness, preset],
                        **instant)
        # the box empties after each PNG (read or refused), so the next drop anywhere lands in it again
        png.upload(guarded(with_settings(studio.settings_from_png, before=("upload",)), len(settings)),
                   [png, *settings], settings, **instant).then(lambda: None, None, [png], **instant)
        dice.click(lambda: random.randrange(2**31), None, [seed], **instant)

        # Generate: one job per page at a time (a second press while it waits or runs is ignored, and the button
        # is off); its progress and queue position show in the line under the button, not over the results
        generate_outputs = [compare, diff, diff_note, python, cli, downloads, history, strip, batch_pairs]
        pressed = [run.click, prompt.submit]
        gr.on(pressed, lambda: (gr.update(interactive=False), gr.Tabs(selected="generate")), None, [run, tabs],
              **instant)
        generating = gr.on(pressed, guarded(with_settings(studio.generate, after=("batch", "history")),
                                                        len(generate_outputs)),
                           [*settings, batch, history], generate_outputs, concurrency_id="pipeline",
                           api_name="generate", trigger_mode="once", show_progress_on=[progress_box])
        generating.then(lambda: gr.update(interactive=True), None, [run], **instant)

        def stop_generating(request: gr.Request) -> Any:
            studio.stop_images(request)
            gr.Info("Stopped: the last result is kept")
            return gr.update(interactive=True)

        # Stop ends a running generation between steps and takes a waiting one out of the queue
        stop_images.click(stop_generating, None, [run], cancels=[generating], concurrency_limit=None)

        described = [compare, diff, diff_note, python, cli, downloads]

        def restore(entries: list, evt: gr.SelectData) -> tuple:
            return studio.restore(entries, evt.index)

        strip.select(guarded(restore, len(settings) + len(described)), [history], [*settings, *described],
                     **instant)

        def restore_pair(entries: list, pairs: list, evt: gr.SelectData) -> tuple:
            # the batch gallery shows the latest Generate's seeds in order; the history has them newest first
            return studio.restore(entries, len(pairs or []) - 1 - evt.index)

        batch_pairs.select(guarded(restore_pair, len(settings) + len(described)), [history, batch_pairs],
                           [*settings, *described], **instant)

        atlas_running = atlas_run.click(guarded(with_settings(studio.atlas, after=("layer",)), 1),
                                        [*settings, layer], [gallery], concurrency_id="pipeline", api_name="atlas",
                                        show_progress_on=[atlas_cost])
        atlas_stop.click(studio.stop_images, None, None, cancels=[atlas_running], concurrency_limit=None)

        def atlas_pick(text: str, evt: gr.SelectData) -> str:
            return studio.atlas_pick(text, evt.value.get("caption") if isinstance(evt.value, dict) else None)

        gallery.select(guarded(atlas_pick, 1), [heads], [heads], **instant)

        xy_running = xy_run.click(guarded(with_settings(studio.xy, after=("rows", "axis", "values")), 3),
                                  [*settings, xy_rows, xy_axis, xy_values], [xy_image, xy_file, xy_note],
                                  concurrency_id="pipeline", api_name="xy", show_progress_on=[xy_note])
        xy_stop.click(studio.stop_images, None, None, cancels=[xy_running], concurrency_limit=None)

        # the picker, the cost of a step, an atlas or a search, and what a search takes from the left panel, redrawn
        # by one event per change (one message, not one per note, for a field that cannot be read)
        def panel_notes(*values: Any) -> tuple:
            current = Settings(*values)
            return (studio.picker(current.heads, current.softness), studio.mode_cost(current),
                    studio.search_uses(current))

        gr.on([c.change for c in settings], panel_notes, settings, [picker, mode_cost, search_uses], **instant)
        generating.then(lambda *values: studio.mode_cost(Settings(*values)), settings, [mode_cost], **instant)
        atlas_inputs, search_inputs = [layer], [contents, seeds, top_k, rounds]
        for trigger in (layer.change, generating.then):
            trigger(studio.atlas_cost, atlas_inputs, [atlas_cost], **instant)
        for trigger in (contents.change, seeds.change, top_k.change, rounds.change, generating.then):
            trigger(studio.search_cost, search_inputs, [search_cost], **instant)

        # a search has its own queue slot: it takes the pipeline one batch at a time, so images go in between
        search_outputs = [status, heatmap, ranking, found, preset, runs]
        form = [objective, style, contents, seeds, top_k, rounds]
        searching = with_settings(studio.search, before=("objective", "style", "contents", "seeds", "top_k", "rounds"),
                                  after=("run_name",), generator=True)
        search_run.click(guarded(searching, len(search_outputs)), [*form, *settings, run_name],
                         search_outputs, concurrency_id="search", concurrency_limit=1, api_name="search")

        def resume_run(name: str, request: gr.Request) -> Any:
            # the form shows the run's own prompts, seeds, k and rounds (what it resumes with), then its progress
            yield (*[gr.skip()] * len(search_outputs), *studio.run_form(name))
            for shown in studio.resume(name, request):
                yield (*shown, *[gr.skip()] * len(form))

        resume.click(guarded(resume_run, len(search_outputs) + len(form)), [run_name],
                     [*search_outputs, *form], concurrency_id="search", concurrency_limit=1)
        search_stop.click(studio.stop_search, None, None, concurrency_limit=None)
        app.unload(studio.stop_all)  # a closed page stops its work

        def choose_run(evt: gr.SelectData) -> tuple:
            name = (evt.row_value or [None])[0]
            return (name, *studio.show_run(name))

        runs.select(guarded(choose_run, 4), None, [run_name, heatmap, ranking, found], **instant)
        use_found.click(lambda text: text, [found], [heads], **instant)
        export_run.click(guarded(studio.export_chosen, 1), [run_name], [exported_run], **instant)
        app.load(studio.runs_table, None, [runs], **instant)
    app.shown_images = shown
    app.queue(default_concurrency_limit=1)
    return app


def launch(model: str = "toy-shapes", host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
           dtype: str = "auto", offload: bool = False, workspace: str = "headhunter-ui-runs", **kwargs: Any) -> Any:
    """Load the model and serve the studio (127.0.0.1 unless ``host`` says otherwise)."""
    from headhunter.pipelines import load_pipeline

    pipe = load_pipeline(model, device, dtype, offload)
    pipe.set_progress_bar_config(disable=True)
    app = build_app(Studio(pipe, model, workspace))
    return app.launch(server_name=host, server_port=port, **kwargs)
