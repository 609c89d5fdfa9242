"""The headhunter studio: generate with hand-picked heads, browse what each head of a layer does, run a short search.

Every request carries its own settings (no state is shared between users). The pipeline serialises its calls on the
shared transformer (a call swaps attention processors), serving waiting calls in arrival order; a search takes it one
batch at a time, so a user's image waits at most for the batch in flight. Each browser session can stop only its own
search (Stop, or closing the page).
"""

from __future__ import annotations

import functools
import re
import shlex
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from headhunter.heads import Head, HeadSet, list_presets, load_preset, preset_family
from headhunter.metadata import save_png
from headhunter.search import HeadHunter, SearchCancelled

from .grid import grid_image, head_at

__all__ = ["Studio", "build_app", "launch"]

TARGETS = ["identity", "uniform", "query_mean", "max"]
SCOPES = ["joint", "image"]


class Studio:
    """The studio's behaviour, independent of the page layout (so it can be tested without a browser)."""

    def __init__(self, pipe: Any, model_name: str, workspace: str | Path = "headhunter-ui-runs"):
        self.pipe = pipe
        self.model_name = model_name
        self.layout = pipe.head_layout
        self.workspace = Path(workspace)
        self.tiny = model_name.lower().startswith("tiny-")
        self.family = preset_family(model_name, self.layout)
        # per browser session: the stop switch of its running search (a user's Stop or closed page ends only theirs)
        self._stops: dict[str, threading.Event] = {}
        self._sessions_guard = threading.Lock()
        self._seconds_per_image: float | None = None
        self.default_steps = 2 if self.tiny else (15 if self.layout.model_type == "flux" else 28)
        self.default_size = 32 if self.tiny else (512 if self.layout.model_type == "flux" else 1024)

    # --- heads ---------------------------------------------------------------------------------------------------
    # The page takes head specs and preset *names* only — the shipped presets and "run:<name>" for a search run in the
    # workspace — never a path: on a shared studio a path would read files anywhere on the server, and the message
    # would tell whether they exist. Names are looked up in listings; nothing a user types reaches the filesystem.
    RUN_PREFIX = "run:"

    def _workspace_presets(self) -> dict[str, Path]:
        """``{"run:<folder>": selected.json}`` for the search runs in the workspace."""
        if not self.workspace.is_dir():
            return {}
        return {f"{self.RUN_PREFIX}{path.parent.name}": path for path in sorted(self.workspace.glob("*/selected.json"))}

    def _load_named_preset(self, name: str) -> dict:
        """A shipped preset or a workspace run by name; ValueError for anything else (a path included)."""
        runs = self._workspace_presets()
        if name in runs:
            return load_preset(runs[name])
        if name in list_presets(self.family):
            return load_preset(name)
        raise ValueError(f"{name!r} is neither a head spec (like L13H17) nor one of the presets offered here")

    def resolve_heads(self, text: str) -> HeadSet:
        """The heads in ``text``: a spec, a shipped preset name or ``run:<name>``; ValueError otherwise."""
        text = (text or "").strip()
        if not text or re.match(r"^[Ll]\s*\d", text):
            return HeadSet.parse(text)
        return self._load_named_preset(text)["heads"]

    def parse_heads(self, text: str) -> HeadSet:
        """The heads in ``text``, validated against the model; gr.Error with the reason otherwise."""
        try:
            return self.resolve_heads(text).validate(self.layout)
        except ValueError as err:
            raise gr.Error(f"Heads: {err}") from None

    def grid(self, text: str) -> Image.Image:
        try:
            heads = self.resolve_heads(text).validate(self.layout)
        except ValueError:
            heads = HeadSet()  # while the user is typing; Generate reports the error
        return grid_image(self.layout, heads)

    def toggle(self, text: str, evt: gr.SelectData) -> tuple[str, Image.Image]:
        heads = self.parse_heads(text)
        picked = head_at(self.layout, *evt.index[:2])
        if picked is None:
            return text, grid_image(self.layout, heads)
        if picked in heads:
            heads = HeadSet([h for h in heads if (h.layer, h.head) != picked])
        else:
            heads = heads | HeadSet([Head(*picked)])
        return str(heads), grid_image(self.layout, heads)

    def preset_names(self) -> list[str]:
        """The shipped presets of this model's family and the workspace's search runs (``run:<name>``) made for it."""
        usable = []
        for name in [*list_presets(self.family), *self._workspace_presets()]:
            try:
                preset = self._load_named_preset(name)
                if preset.get("family", self.family) != self.family:
                    continue  # a search run on another model
                preset["heads"].validate(self.layout)
            except ValueError:
                continue
            usable.append(name)
        return usable

    def apply_preset(self, name: str) -> tuple[str, float, float, Image.Image]:
        if not name:
            raise gr.Error("Choose a preset")
        try:
            preset = self._load_named_preset(name)
            heads = preset["heads"].validate(self.layout)
        except ValueError as err:
            raise gr.Error(f"Preset: {err}") from None
        return str(heads), float(preset.get("pag_scale", 3.0)), float(preset.get("pag_softness", 1.0)), grid_image(self.layout, heads)

    # --- generation ----------------------------------------------------------------------------------------------
    def call_kwargs(self, steps: float, size: float, cfg: float, negative: str, pag_scale: float, softness: float,
                    target: str, scope: str, start: float, end: float) -> dict:
        steps, size = int(steps), int(size)
        if steps < 1 or size < 16:
            raise gr.Error("Steps must be at least 1 and size at least 16")
        kwargs = dict(num_inference_steps=steps, height=size, width=size, pag_scale=float(pag_scale),
                      pag_softness=float(softness), pag_target=target, pag_scope=scope,
                      pag_interval=(float(start), float(end)), negative_prompt=negative or None)
        if self.layout.model_type == "flux":
            kwargs["true_cfg_scale"] = float(cfg)
            if self.tiny:
                kwargs["max_sequence_length"] = 48
        else:
            kwargs["guidance_scale"] = float(cfg)
        return kwargs

    def _run(self, prompts: list[str], seeds: list[int], plans: list, kwargs: dict) -> list[Image.Image]:
        generators = [torch.Generator(device="cpu" if self.pipe.device.type == "cpu" else self.pipe.device).manual_seed(s)
                      for s in seeds]
        started = time.perf_counter()
        try:  # the pipeline serialises calls on its transformer, in arrival order
            images = self.pipe(prompts, generator=generators, pag_heads=plans, **kwargs).images
        except ValueError as err:
            raise gr.Error(str(err)) from None
        # the machine's speed at these settings, for the cost shown before an atlas or a search starts
        self._seconds_per_image = (time.perf_counter() - started) / len(prompts)
        return images

    # --- cost, before starting ------------------------------------------------------------------------------------
    def _estimate(self, images: int) -> str:
        if self._seconds_per_image is None:
            return f"{images} images (no speed measured yet: generate once for an estimate)"
        seconds = images * self._seconds_per_image
        duration = f"{seconds:.1f} s" if seconds < 10 else f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
        return f"{images} images, about {duration} at the last measured {self._seconds_per_image:.2f} s per image"

    def atlas_cost(self, layer: float) -> str:
        return f"Cost: {self._estimate(self.layout.num_heads)}"

    def search_cost(self, contents: str, seeds: str, top_k: float, rounds: float) -> str:
        """The images a greedy search over every head would generate with these inputs."""
        prompts = [line for line in (contents or "").splitlines() if line.strip()]
        try:
            seed_count = len({int(s) for s in str(seeds).split(",") if s.strip()}) or 1
            top_k, rounds = int(top_k), int(rounds)
        except (TypeError, ValueError):
            return "Cost: —"
        candidates = self.layout.num_layers * self.layout.num_heads
        if not prompts or top_k < 1 or rounds < 1 or top_k * rounds > candidates:
            return "Cost: —"
        return f"Cost: {self._estimate(_greedy_images(candidates, len(prompts) * seed_count, top_k, rounds))}"

    def generate(self, prompt: str, negative: str, seed: float, steps: float, size: float, cfg: float,
                 pag_scale: float, softness: float, target: str, scope: str, start: float, end: float, heads_text: str):
        """Unguided and guided images of one prompt and seed (one batched call, a head plan per image)."""
        if not (prompt or "").strip():
            raise gr.Error("Prompt: write a prompt first")
        heads = self.parse_heads(heads_text)
        kwargs = self.call_kwargs(steps, size, cfg, negative, pag_scale, softness, target, scope, start, end)
        unguided, guided = self._run([prompt, prompt], [int(seed)] * 2, [None, heads], kwargs)
        diff = np.abs(np.asarray(guided, dtype=np.int16) - np.asarray(unguided, dtype=np.int16)).astype(np.float32)
        gain = 255.0 / max(1.0, float(diff.max()))
        diff_image = Image.fromarray(np.clip(diff * gain, 0, 255).astype(np.uint8))
        if diff_image.width < 256:  # small images: enlarge pixel-exactly so the difference is visible
            factor = 256 // diff_image.width
            diff_image = diff_image.resize((diff_image.width * factor, diff_image.height * factor), Image.NEAREST)
        python, cli = self.snippets(prompt, int(seed), heads, kwargs)
        note = f"|guided − unguided|, amplified ×{gain:.1f}; mean change {diff.mean():.2f} of 255"
        files = self.save_pair(prompt, int(seed), heads, kwargs, unguided, guided)
        return (unguided, guided), diff_image, note, python, cli, files

    def save_pair(self, prompt: str, seed: int, heads: HeadSet, kwargs: dict, unguided: Image.Image,
                  guided: Image.Image) -> list[str]:
        """Both images as PNGs carrying their full settings (the CLI's metadata), for download."""
        folder = Path(tempfile.mkdtemp(prefix="headhunter-studio-"))
        base = {"model": self.model_name, "prompt": prompt, "seed": seed,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
        stem = f"{re.sub(r'[^a-z0-9]+', '-', prompt.lower()).strip('-')[:40] or 'image'}-s{seed}"
        return [str(save_png(unguided, folder / f"{stem}-unguided.png", {**base, "pag_heads": None})),
                str(save_png(guided, folder / f"{stem}-guided.png", {**base, "pag_heads": str(heads)}))]

    def snippets(self, prompt: str, seed: int, heads: HeadSet, kwargs: dict) -> tuple[str, str]:
        """The settings as Python (runnable as is) and as a ``headhunter generate`` line."""
        cls = "HeadHunterFluxPipeline" if self.layout.model_type == "flux" else "HeadHunterSD3Pipeline"
        device = self.pipe.device.type
        args = ",\n    ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
        if self.tiny:
            load = f"from headhunter.testing import tiny_pipeline\n\npipe = tiny_pipeline({self.model_name!r}).to({device!r})\n"
        else:
            load = (f"from headhunter.pipelines import {cls}\n\n"
                    f"pipe = {cls}.from_pretrained({self.model_name!r}, torch_dtype={self.pipe.transformer.dtype}).to({device!r})\n")
        python = (f"import torch\n{load}image = pipe(\n    {prompt!r},\n"
                  f"    generator=torch.Generator({device!r}).manual_seed({seed}),\n"
                  f"    pag_heads={str(heads)!r},\n    {args},\n).images[0]\n")
        cfg = kwargs.get("true_cfg_scale", kwargs.get("guidance_scale"))
        parts = ["headhunter", "generate", "--model", self.model_name, "--prompt", prompt, "--seed", str(seed),
                 "--steps", str(kwargs["num_inference_steps"]), "--size", str(kwargs["width"]), "--cfg", str(cfg),
                 "--heads", str(heads), "--pag-scale", str(kwargs["pag_scale"]), "--softness", str(kwargs["pag_softness"]),
                 "--target", kwargs["pag_target"], "--scope", kwargs["pag_scope"],
                 "--interval", ",".join(str(x) for x in kwargs["pag_interval"])]
        if kwargs.get("negative_prompt"):
            parts += ["--negative-prompt", kwargs["negative_prompt"]]
        return python, shlex.join(parts)

    # --- atlas ---------------------------------------------------------------------------------------------------
    def atlas(self, prompt: str, negative: str, seed: float, steps: float, size: float, cfg: float, pag_scale: float,
              softness: float, target: str, scope: str, start: float, end: float, layer: float,
              progress: gr.Progress = gr.Progress()):
        """Every head of one layer perturbed alone, in batches of per-image plans."""
        if not (prompt or "").strip():
            raise gr.Error("Prompt: write a prompt first")
        layer = int(layer)
        if not 0 <= layer < self.layout.num_layers:
            raise gr.Error(f"Layer: {layer} is out of range; this model has {self.layout.describe()}")
        kwargs = self.call_kwargs(steps, size, cfg, negative, pag_scale, softness, target, scope, start, end)
        heads = list(range(self.layout.num_heads))
        gallery, batch = [], 8
        for first in progress.tqdm(range(0, len(heads), batch), desc=f"layer {layer}"):
            chunk = heads[first : first + batch]
            images = self._run([prompt] * len(chunk), [int(seed)] * len(chunk), [[(layer, h)] for h in chunk], kwargs)
            gallery += [(image, f"L{layer}H{h}") for image, h in zip(images, chunk)]
        return gallery

    def atlas_pick(self, text: str, evt: gr.SelectData) -> tuple[str, Image.Image]:
        label = evt.value.get("caption") if isinstance(evt.value, dict) else None
        head = HeadSet.parse(label) if label else HeadSet()
        heads = self.parse_heads(text) | head
        return str(heads), grid_image(self.layout, heads)

    # --- search --------------------------------------------------------------------------------------------------
    def search(self, objective: str, style: str, contents: str, seeds: str, top_k: float, rounds: float, steps: float,
               size: float, pag_scale: float, cfg: float = 1.0, softness: float = 1.0, target: str = "identity",
               scope: str = "joint", negative: str = "", request: gr.Request | None = None):
        """A short HeadHunter search; yields (status, latest heat map, selected heads, preset menu) while it runs.

        It takes the pipeline one batch at a time (other users' images go between batches), and stops after the batch
        in flight when this session presses Stop or closes the page (:meth:`stop_search`)."""
        prompts = [line.strip() for line in (contents or "").splitlines() if line.strip()]
        if not prompts:
            raise gr.Error("Content prompts: give at least one, one per line")
        if style and style.strip():
            prompts = [f"{style.strip()}, {p}" for p in prompts]
        try:
            seed_list = [int(s) for s in str(seeds).split(",") if s.strip()] or [0]
        except ValueError:
            raise gr.Error("Seeds: integers joined by commas, e.g. 0,1") from None
        run_dir = self.workspace / f"search-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        name = f"{self.RUN_PREFIX}{run_dir.name}"
        if not 0.0 <= float(softness) <= 1.0:
            raise gr.Error(f"Softness: {softness} is outside [0, 1]")
        # every left-panel setting a search uses is honoured (and said in its status line)
        extra: dict[str, Any] = {}
        guidance = None  # SD3: CFG off unless asked; FLUX: its distilled default
        if self.layout.model_type == "flux":
            if self.tiny:
                extra["max_sequence_length"] = 48
            if float(cfg) > 1 and (negative or "").strip():
                extra.update(true_cfg_scale=float(cfg), negative_prompt=negative.strip())
        else:
            guidance = float(cfg)
            if float(cfg) > 1 and (negative or "").strip():
                extra["negative_prompt"] = negative.strip()
        used = (f"steps {int(steps)}, size {int(size)}, {'true CFG' if self.layout.model_type == 'flux' else 'CFG'} "
                f"{float(cfg):g}{' with the negative prompt' if 'negative_prompt' in extra else ''}, PAG scale "
                f"{float(pag_scale):g}, softness {float(softness):g}, target {target}, scope {scope}")
        stop = threading.Event()
        state: dict[str, Any] = {}
        try:
            hunter = HeadHunter(
                self.pipe, objective, prompts, seed_list, int(top_k), int(rounds), run_dir,
                num_inference_steps=int(steps), height=int(size), width=int(size), pag_scale=float(pag_scale),
                pag_softness=float(softness), pag_target=target, pag_scope=scope, guidance_scale=guidance,
                batch_size=8, model_name=self.model_name, should_stop=stop.is_set, progress=False,
                extra_call_kwargs=extra or None,
            )
        except ValueError as err:
            raise gr.Error(f"Search: {err}") from None
        total = _greedy_images(len(hunter.config.candidates), len(hunter.config.pairs), hunter.config.top_k,
                               hunter.config.rounds)
        with self._sessions_guard:
            self._stops[_session(request)] = stop

        def work() -> None:
            try:
                state["result"] = hunter.run()
            except Exception as err:  # reported in the page below
                state["error"] = err

        thread = threading.Thread(target=work, daemon=True)
        started = time.perf_counter()
        thread.start()
        try:
            while thread.is_alive():
                thread.join(timeout=0.5)
                yield (f"{self._progress(run_dir, total, started)} — with {used}", self._heatmap_value(run_dir),
                       gr.skip(), gr.skip())
        finally:
            stop.set()  # the generator closed (page gone, event cancelled): end after the batch in flight
            thread.join()
            with self._sessions_guard:
                if self._stops.get(_session(request)) is stop:
                    del self._stops[_session(request)]
        error = state.get("error")
        if isinstance(error, SearchCancelled):
            yield (f"stopped — resumable: {_count_scores(run_dir)} of {total} images scored, kept in the workspace as "
                   f"{run_dir.name}",
                   self._heatmap_value(run_dir), gr.skip(), gr.skip())
            return
        if error is not None:
            raise gr.Error(f"Search failed: {error}")
        result = state["result"]
        yield (f"done: {result.images_generated} images; the heads are the preset {name}",
               self._heatmap_value(run_dir), str(result.selected), gr.update(choices=self.preset_names(), value=name))

    def stop_search(self, request: gr.Request | None = None) -> None:
        """Stop this session's search after the batch in flight (the Stop button, and closing the page)."""
        with self._sessions_guard:
            stop = self._stops.get(_session(request))
        if stop is not None:
            stop.set()

    def _progress(self, run_dir: Path, total: int, started: float) -> str:
        done = _count_scores(run_dir)
        elapsed = time.perf_counter() - started
        line = f"running… {done} / {total} images, {elapsed:.0f} s"
        if done:
            line += f", about {elapsed / done * (total - done):.0f} s to go"
        return line

    def _heatmap_value(self, run_dir: Path) -> Any:
        latest = self._latest_heatmap(run_dir)
        return str(latest) if latest is not None else gr.skip()

    @staticmethod
    def _latest_heatmap(run_dir: Path) -> Path | None:
        maps = sorted((run_dir / "heatmaps").glob("round-*.png"), key=lambda p: int(p.stem.split("-")[-1]))
        return maps[-1] if maps else None


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _greedy_images(candidates: int, pairs: int, top_k: int, rounds: int) -> int:
    """Images a greedy search generates: every remaining candidate on every pair, each round."""
    return sum((candidates - r * top_k) * pairs for r in range(rounds))


def _count_scores(run_dir: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in run_dir.glob("scores*.jsonl"))


def keeping_last_result(fn: Any, outputs: int) -> Any:
    """``fn`` for an event whose outputs must survive a mistake: a ``gr.Error`` becomes a warning toast with the
    message, and every output keeps what it showed (instead of turning into an error badge)."""

    @functools.wraps(fn)
    def handler(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error as err:
            gr.Warning(str(getattr(err, "message", err)))
            return tuple(gr.skip() for _ in range(outputs)) if outputs > 1 else gr.skip()

    return handler


def build_app(studio: Studio) -> gr.Blocks:
    layout = studio.layout
    with gr.Blocks(title="headhunter studio") as app:
        gr.Markdown(f"# headhunter studio\n**{studio.model_name}** — {layout.describe()}. Click the grid to pick heads "
                    "(`L13H17` notation), generate, compare.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value="a lighthouse at dusk")
                negative = gr.Textbox(label="Negative prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0)
                    steps = gr.Number(label="Steps", value=studio.default_steps, precision=0)
                    size = gr.Number(label="Size", value=studio.default_size, precision=0)
                with gr.Row():
                    cfg = gr.Number(label="CFG" if layout.model_type == "sd3" else "True CFG", value=1.0)
                    pag_scale = gr.Number(label="PAG scale", value=3.0)
                    softness = gr.Slider(0, 1, value=1.0, step=0.05, label="Softness")
                with gr.Row():
                    target = gr.Dropdown(TARGETS, value="identity", label="Target")
                    scope = gr.Dropdown(SCOPES, value="joint", label="Scope")
                    start = gr.Slider(0, 1, value=0.0, step=0.05, label="Interval start")
                    end = gr.Slider(0, 1, value=1.0, step=0.05, label="Interval end")
                heads = gr.Textbox(label="Heads", value="", placeholder="L13H17, L1H10@0.5")
                with gr.Row():
                    preset = gr.Dropdown(studio.preset_names(), label="Preset", value=None)
                    use_preset = gr.Button("Use preset")
                grid = gr.Image(value=grid_image(layout, HeadSet()), label="Head grid (click to toggle)",
                                interactive=False, type="pil", elem_id="head-grid", show_label=True)
            with gr.Column(scale=1):
                with gr.Tab("Generate"):
                    run = gr.Button("Generate", variant="primary")
                    # PNG, not the default WebP: what the page shows is what the pipeline made
                    compare = gr.ImageSlider(label="Unguided | guided", type="pil", elem_id="compare", height=360,
                                             format="png")
                    diff = gr.Image(label="Absolute difference", type="pil", elem_id="difference", height=240,
                                    format="png")
                    downloads = gr.File(label="Download: unguided and guided PNG, settings in their metadata",
                                        file_count="multiple", elem_id="downloads")
                    diff_note = gr.Markdown()
                    python = gr.Code(label="Python", language="python")
                    cli = gr.Textbox(label="Command line")
                with gr.Tab("Head atlas"):
                    layer = gr.Number(label="Layer", value=0, precision=0)
                    atlas_run = gr.Button("Run atlas")
                    atlas_cost = gr.Markdown(studio.atlas_cost(0), elem_id="atlas-cost")
                    gallery = gr.Gallery(label="Each head of the layer, perturbed alone (click to add it)",
                                         columns=6, elem_id="atlas")
                with gr.Tab("Search"):
                    gr.Markdown("The search uses the settings on the left — steps, size, CFG (with the negative "
                                "prompt), PAG scale, softness, target, scope — and says which in its status line.")
                    objective = gr.Textbox(label="Objective", value="colorfulness")
                    style = gr.Textbox(label="Style", value="")
                    contents = gr.Textbox(label="Content prompts", lines=3, value="a parrot\na market stall")
                    with gr.Row():
                        seeds = gr.Textbox(label="Seeds", value="0,1")
                        top_k = gr.Number(label="k", value=2, precision=0)
                        rounds = gr.Number(label="Rounds", value=1, precision=0)
                    search_cost = gr.Markdown(studio.search_cost(contents.value, seeds.value, top_k.value, rounds.value),
                                              elem_id="search-cost")
                    with gr.Row():
                        search_run = gr.Button("Search", variant="primary")
                        search_stop = gr.Button("Stop")
                    status = gr.Markdown()
                    heatmap = gr.Image(label="Latest heat map (layers × heads)", type="filepath")
                    found = gr.Textbox(label="Selected heads")
                    use_found = gr.Button("Use these heads")

        settings = [prompt, negative, seed, steps, size, cfg, pag_scale, softness, target, scope, start, end]
        grid.select(studio.toggle, [heads], [heads, grid], concurrency_limit=None, show_progress="hidden")
        # typing re-draws the grid; programmatic updates (clicks, presets) send their own grid
        heads.input(studio.grid, [heads], [grid], concurrency_limit=None, show_progress="hidden")
        use_preset.click(keeping_last_result(studio.apply_preset, 4), [preset], [heads, pag_scale, softness, grid],
                         concurrency_limit=None)
        generating = run.click(keeping_last_result(studio.generate, 6), [*settings, heads],
                               [compare, diff, diff_note, python, cli, downloads], concurrency_id="pipeline")
        atlas_run.click(studio.atlas, [*settings, layer], [gallery], concurrency_id="pipeline")
        # the cost of an atlas or a search, before it starts (and again once a generation has measured the speed)
        atlas_inputs, search_inputs = [layer], [contents, seeds, top_k, rounds]
        for trigger in (layer.change, generating.then):
            trigger(studio.atlas_cost, atlas_inputs, [atlas_cost], concurrency_limit=None, show_progress="hidden")
        for trigger in (contents.change, seeds.change, top_k.change, rounds.change, generating.then):
            trigger(studio.search_cost, search_inputs, [search_cost], concurrency_limit=None, show_progress="hidden")
        gallery.select(studio.atlas_pick, [heads], [heads, grid], concurrency_limit=None)
        # a search has its own queue slot: it takes the pipeline one batch at a time, so images go in between
        search_run.click(studio.search, [objective, style, contents, seeds, top_k, rounds, steps, size, pag_scale, cfg,
                                         softness, target, scope, negative],
                         [status, heatmap, found, preset], concurrency_id="search", concurrency_limit=1)
        search_stop.click(studio.stop_search, None, None, concurrency_limit=None)
        app.unload(studio.stop_search)  # a closed page stops its search
        use_found.click(lambda text: (text, studio.grid(text)), [found], [heads, grid], concurrency_limit=None)
    app.queue(default_concurrency_limit=1)
    return app


def launch(model: str = "tiny-sd3", host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
           dtype: str = "auto", offload: bool = False, workspace: str = "headhunter-ui-runs", **kwargs: Any) -> Any:
    """Load the model and serve the studio (127.0.0.1 unless ``host`` says otherwise)."""
    from headhunter.pipelines import load_pipeline

    pipe = load_pipeline(model, device, dtype, offload)
    pipe.set_progress_bar_config(disable=True)
    app = build_app(Studio(pipe, model, workspace))
    return app.launch(server_name=host, server_port=port, **kwargs)
