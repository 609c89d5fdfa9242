"""The studio's behaviour, independent of the page layout (so it can be tested without a browser).

Every request carries its own settings and its session's history (no state is shared between users). The pipeline
serialises its calls on the shared transformer (a call swaps attention processors), serving waiting calls in arrival
order; a search takes it one batch at a time, so a user's image waits at most for the batch in flight. Each browser
session can stop only its own work: its images between denoising steps, its search after the batch in flight
(Stop, or closing the page).
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import torch
from PIL import Image

from headhunter.arguments import classifier_free_guidance_on, image_size_rule
from headhunter.heads import HeadSet, list_presets, load_preset, preset_family, preset_from_json, save_preset
from headhunter.guidance import default_cfg_scale, passes_per_step
from headhunter.metadata import read_png_settings, read_settings, save_png, settings_of, with_settings
from headhunter.pipelines import HeadHunterModularPipeline
from headhunter.pipelines.loading import builtin_defaults
from headhunter.scorers import available_scorers
from headhunter.search import HeadHunter, SearchCancelled
from headhunter.testbed import WORLDS
from headhunter.testing import TOY_MODELS

from . import workspace as ws
from .picker import picker_html, toggle_head, toggle_layer
from .settings import FIELDS, Settings
from .xy import MAX_CELLS, axis_label, column_settings, compose_grid, parse_axis_values

__all__ = ["Studio", "Stopped"]

TARGETS = ["identity", "uniform", "query_mean", "max"]
SCOPES = ["joint", "image"]
HISTORY_LIMIT = 24
BATCH_LIMIT = 16
IMAGES_PER_CALL = 8


class Stopped(Exception):
    """This session pressed Stop (or closed its page) while its images were being made."""


class Studio:
    """The studio for one loaded pipeline; ``workspace`` holds its saved presets and search runs."""

    def __init__(self, pipe: Any, model_name: str, workspace: str | Path = "headhunter-ui-runs"):
        self.pipe = pipe
        self.model_name = model_name
        self.layout = pipe.head_layout
        self.workspace = ws.Workspace(workspace)
        self.builtin = builtin_defaults(model_name)
        self.family = preset_family(model_name, self.layout)
        self.flux = self.layout.model_type == "flux"
        # per browser session and kind of work ("images", "search"): the switch its Stop sets
        self._stops: dict[tuple[str, str], threading.Event] = {}
        self._running_runs: set[str] = set()
        self._guard = threading.Lock()
        self._seconds_per_image: float | None = None
        self._seconds_per_step: dict[tuple, float] = {}  # by _cost_key: the last measured, shown with the mode
        #: the Search tab's objective and content prompts
        self.search_defaults = ("colorfulness", "a parrot\na market stall")
        if model_name.lower() in WORLDS:  # prompts of its grammar, read back by the weight-free objective
            world = WORLDS[model_name.lower()]
            self.search_defaults = (world.objective, "\n".join(world.prompts))
        cfg = default_cfg_scale(self.layout.model_type)  # off, except where a model is used with it (Wan)
        if self.builtin is not None:
            size = self.builtin.size
            self.defaults = Settings(steps=self.builtin.steps, width=size, height=size, prompt=self.builtin.prompt,
                                     cfg=cfg)
        else:
            size = 512 if self.flux else 1024
            self.defaults = Settings(steps=15 if self.flux else 28, width=size, height=size,
                                     prompt="a lighthouse at dusk", cfg=cfg)
        self.size_multiple, self.size_max = image_size_rule(pipe)
        # a preset searched for overall quality, when the model ships one: the first Generate already shows guidance
        quality = [name for name in list_presets(self.family) if name.endswith(("-fidelity", "-quality"))]
        if quality:
            self.defaults = replace(self.defaults, heads=str(load_preset(quality[0])["heads"]))
        self.default_preset = quality[0] if quality else None

    def size_help(self) -> str:
        """The sizes this model takes, in pixels (shown under Width and Height)."""
        return f"16–{self.size_max} px, a multiple of {self.size_multiple}"

    def check_size(self, settings: Settings) -> None:
        """gr.Error, in pixels, for a width or height this model cannot make."""
        for name in ("width", "height"):
            value = getattr(settings, name)
            if value > self.size_max:
                raise gr.Error(f"{name.capitalize()}: {value} px is more than this model takes ({self.size_help()})")
            if value % self.size_multiple:
                low = value // self.size_multiple * self.size_multiple
                raise gr.Error(f"{name.capitalize()}: {value} px is not a multiple of {self.size_multiple} px "
                               f"(try {max(low, 16)} or {low + self.size_multiple})")

    # --- heads and presets -----------------------------------------------------------------------------------------
    # The page takes head specs and preset *names* only: shipped presets of this model's family, "saved:<name>" and
    # "run:<name>" from the workspace. Never a path: on a shared studio a path would read files anywhere on the
    # server, and the message would tell whether they exist. Names are looked up in listings.
    def _load_named_preset(self, name: str) -> dict:
        found = self.workspace.load_preset(name)
        if found is not None:
            return found
        if name in list_presets(self.family):
            return load_preset(name)
        raise ValueError(f"{name!r} is neither a head spec (like L13H17) nor one of the presets offered here")

    def resolve_heads(self, text: str) -> HeadSet:
        """The heads in ``text``: a spec, a preset name offered here; ValueError otherwise."""
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

    def picker(self, text: str, softness: float = 1.0) -> str:
        """The head grid for the Heads field; a mistake in the field is shown above the grid."""
        try:
            heads = self.resolve_heads(text).validate(self.layout)
        except ValueError as err:
            return picker_html(self.layout, HeadSet(), 1.0, error=f"Heads: {err}")
        try:
            u = float(softness)
        except (TypeError, ValueError):
            u = float("nan")
        if not 0.0 <= u <= 1.0:  # the heads are drawn with full shade until the softness reads
            return picker_html(self.layout, heads, 1.0, error="Softness: a number from 0 to 1")
        return picker_html(self.layout, heads, u)

    def pick(self, text: str, layer: int, head: int | None) -> str:
        """The Heads field after a click on a cell (``head``) or a row label (``head=None``)."""
        heads = self.parse_heads(text)
        if not 0 <= int(layer) < self.layout.num_layers:
            return str(heads)
        if head is None:
            return str(toggle_layer(self.layout, heads, int(layer)))
        return str(toggle_head(self.layout, heads, int(layer), int(head)))

    def preset_names(self) -> list[str]:
        """Shipped presets of this model's family, then the workspace's saved presets and search runs made for it."""
        usable = []
        for name in [*list_presets(self.family), *self.workspace.presets()]:
            try:
                preset = self._load_named_preset(name)
                if preset.get("family", self.family) != self.family:
                    continue  # made on another model
                preset["heads"].validate(self.layout)
            except ValueError:
                continue
            usable.append(name)
        return usable

    def apply_preset(self, name: str) -> tuple[str, float, float]:
        """Heads, PAG scale and softness of a preset."""
        if not name:
            raise gr.Error("Choose a preset")
        try:
            preset = self._load_named_preset(name)
            heads = preset["heads"].validate(self.layout)
        except ValueError as err:
            raise gr.Error(f"Preset: {err}") from None
        return str(heads), float(preset.get("pag_scale", 3.0)), float(preset.get("pag_softness", 1.0))

    def save_preset(self, name: str, description: str, heads_text: str, pag_scale: float, softness: float):
        """Save the current heads in the workspace as ``saved:<name>``; returns the preset menu (with it chosen)."""
        heads = self.parse_heads(heads_text)
        if not heads:
            raise gr.Error("Heads: pick some heads to save")
        try:
            menu_name = self.workspace.save_preset(name, heads, model=self.model_name, family=self.family,
                                                   pag_scale=float(pag_scale), softness=float(softness),
                                                   description=description or "")
        except ValueError as err:
            raise gr.Error(str(err)) from None
        gr.Info(f"saved as {menu_name}")
        return gr.update(choices=self.preset_names(), value=menu_name)

    def export_preset(self, name: str, description: str, heads_text: str, pag_scale: float, softness: float) -> str:
        """The current heads as a preset file to download."""
        heads = self.parse_heads(heads_text)
        if not heads:
            raise gr.Error("Heads: pick some heads to export")
        try:
            stem = ws.check_name(name, "Preset name") if (name or "").strip() else "heads"
        except ValueError as err:
            raise gr.Error(str(err)) from None
        path = Path(tempfile.mkdtemp(prefix="headhunter-preset-")) / f"{stem}.json"
        save_preset(path, heads, model=self.model_name, family=self.family, pag_scale=float(pag_scale),
                    pag_softness=float(softness), description=description or "", source="headhunter studio")
        return str(path)

    def import_preset(self, upload: str | None):
        """A preset file uploaded from the user's machine: checked, saved in the workspace, and put in the fields."""
        if not upload:
            raise gr.Error("Import: drop a preset .json file")
        path = Path(upload)
        try:
            if path.stat().st_size > 1_000_000:
                raise ValueError("the file is larger than a preset can be")
            preset = preset_from_json(json.loads(path.read_text(encoding="utf-8")), "the uploaded file")
            if preset.get("family", self.family) != self.family:
                raise ValueError(f"it was made for {preset['family']} models, this is {self.family}")
            heads = preset["heads"].validate(self.layout)
            stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-_")[:64] or "imported"
            menu_name = self.workspace.save_preset(
                stem, heads, model=preset.get("model") or self.model_name, family=self.family,
                pag_scale=float(preset.get("pag_scale", 3.0)), softness=float(preset.get("pag_softness", 1.0)),
                description=str(preset.get("description", "")), source=str(preset.get("source") or "imported"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            raise gr.Error(f"Import: {err}") from None
        return (str(heads), float(preset.get("pag_scale", 3.0)), float(preset.get("pag_softness", 1.0)),
                gr.update(choices=self.preset_names(), value=menu_name))

    # --- stopping ----------------------------------------------------------------------------------------------------
    def _switch(self, request: Any, kind: str) -> threading.Event:
        """A fresh stop switch for this session's new work of ``kind``."""
        event = threading.Event()
        with self._guard:
            self._stops[(_session(request), kind)] = event
        return event

    def _release(self, request: Any, kind: str, event: threading.Event) -> None:
        with self._guard:
            if self._stops.get((_session(request), kind)) is event:
                del self._stops[(_session(request), kind)]

    def stop(self, kind: str, request: Any = None) -> None:
        """Stop this session's work of ``kind`` ("images" between denoising steps, "search" after its batch)."""
        with self._guard:
            event = self._stops.get((_session(request), kind))
        if event is not None:
            event.set()

    def stop_images(self, request: gr.Request = None) -> None:
        self.stop("images", request)

    def stop_search(self, request: gr.Request = None) -> None:
        self.stop("search", request)

    def stop_all(self, request: gr.Request = None) -> None:
        """A closed page: everything this session started stops."""
        with self._guard:
            events = [e for (session, _), e in self._stops.items() if session == _session(request)]
        for event in events:
            event.set()

    # --- generation ----------------------------------------------------------------------------------------------
    def _kwargs(self, settings: Settings) -> dict:
        return settings.call_kwargs(self.layout.model_type, self.builtin.call if self.builtin else {})

    def _run(self, prompts: list[str], seeds: list[int], plans: list, kwargs: dict, stop: threading.Event | None = None,
             on_step: Callable[[int], None] | None = None) -> list[Image.Image]:
        """One pipeline call; ``stop`` ends it between denoising steps (:class:`Stopped`)."""
        device = "cpu" if self.pipe.device.type == "cpu" else self.pipe.device
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped at step {step + 1} of {kwargs['num_inference_steps']}")
            if on_step is not None:
                on_step(step + 1)
            return {}

        started = time.perf_counter()
        try:  # the pipeline serialises calls on its transformer, in arrival order
            images = self.pipe(prompts, generator=generators, pag_heads=plans, callback_on_step_end=step_end,
                               **kwargs).images
        except ValueError as err:
            raise gr.Error(str(err)) from None
        # the machine's speed at these settings, for the cost shown before an atlas or a search starts
        self._seconds_per_image = (time.perf_counter() - started) / len(prompts)
        return images

    def _checked(self, settings: Settings) -> Settings:
        try:
            settings = settings.checked()
        except ValueError as err:
            raise gr.Error(str(err)) from None
        if not settings.prompt.strip():
            raise gr.Error("Prompt: write a prompt first")
        self.check_size(settings)
        return settings

    def generate(self, settings: Settings, batch: int = 1, history: list | None = None, request: Any = None,
                 progress: Any = None) -> tuple:
        """Unguided and guided images of a prompt for ``batch`` seeds from ``settings.seed`` (a head plan per image,
        up to 8 images a call). Returns the compare pair, difference, its note, the Python and CLI lines, the
        downloads (all of the first seed), this session's history (state and strip) with the new pairs first, and
        the batch gallery (each seed's pair side by side; shown for a batch)."""
        settings = self._checked(settings)
        heads = self.parse_heads(settings.heads)
        batch = int(batch or 1)
        if not 1 <= batch <= BATCH_LIMIT:
            raise gr.Error(f"Seed batch: 1 to {BATCH_LIMIT}")
        kwargs = self._kwargs(settings)
        seeds = [settings.seed + i for i in range(batch)]
        rows = [(seed, plan) for seed in seeds for plan in (None, heads)]
        stop = self._switch(request, "images")
        made: list[Image.Image] = []
        started = time.perf_counter()
        try:
            for first in range(0, len(rows), IMAGES_PER_CALL):
                chunk = rows[first : first + IMAGES_PER_CALL]
                which = f"pair {first // 2 + 1}" if len(chunk) == 2 else \
                    f"pairs {first // 2 + 1}–{(first + len(chunk)) // 2}"

                def on_step(step: int, desc: str = f"{which} of {batch}" if batch > 1 else "") -> None:
                    if progress is not None:  # the steps of one image (a pair's two images denoise together)
                        progress((step, settings.steps), desc=desc or None, unit="steps")

                made += self._run([settings.prompt] * len(chunk), [s for s, _ in chunk], [p for _, p in chunk], kwargs,
                                  stop, on_step)
        except Stopped as err:
            raise gr.Error(f"{err}; the last result is kept") from None
        finally:
            self._release(request, "images", stop)
        # shown with the guidance mode: what a step of one unguided + guided pair took with these settings
        self._seconds_per_step[_cost_key(kwargs)] = (time.perf_counter() - started) / (settings.steps * batch)
        entries = []
        for i, seed in enumerate(seeds):
            pair_settings = replace(settings, seed=seed, heads=str(heads))
            files = self.save_pair(pair_settings, heads, kwargs, made[2 * i], made[2 * i + 1])
            entries.append({"settings": list(pair_settings.values()), "files": files})
        history = (list(reversed(entries)) + list(history or []))[:HISTORY_LIMIT]
        # (save_pair put their settings on the images: the page's PNGs carry them)
        pairs = [(side_by_side(made[2 * i], made[2 * i + 1]), f"seed {seed}") for i, seed in enumerate(seeds)]
        return (*self._describe(replace(settings, heads=str(heads)), (made[0], made[1]), entries[0]["files"]),
                history, history_strip(history), gr.update(value=pairs, visible=batch > 1))

    def _describe(self, settings: Settings, pair: tuple[Image.Image, Image.Image], files: list[str]) -> tuple:
        """Every output that describes one run: the compare pair, the difference and its note, the Python and CLI
        lines, the downloads."""
        heads = HeadSet.parse(settings.heads)
        kwargs = self._kwargs(settings)
        unguided, guided = pair
        diff_image, note = difference(unguided, guided)
        if not heads:
            note = "**no heads: guided = unguided** — pick heads in the grid or use a preset. " + note
        with_settings(diff_image, {**settings_of(guided), "image": "absolute difference, unguided vs guided"})
        python, cli = self.snippets(settings.prompt, settings.seed, heads, kwargs)
        return pair, diff_image, note, python, cli, files

    def restore(self, history: list, index: int) -> tuple:
        """A history entry: every left-panel field, and every output that describes it (:meth:`_describe`)."""
        if not history or not 0 <= index < len(history):
            raise gr.Error("History: nothing to restore")
        entry = history[index]
        settings = Settings(*entry["settings"])
        pair = tuple(_open_with_settings(path) for path in entry["files"])
        return (*entry["settings"], *self._describe(settings, pair, entry["files"]))

    def settings_from_png(self, upload: str | None, current: Settings | None = None, request: Any = None,
                          progress: Any = None) -> tuple:
        """The left panel from a dropped PNG: every field from a headhunter PNG (the studio's, ``headhunter
        generate``); from an A1111, Forge or ComfyUI PNG the fields they share (prompt, negative prompt, seed,
        steps, size, CFG), the head guidance staying as it is."""
        if not upload:
            raise gr.Error("Drop a PNG made by headhunter, A1111 or ComfyUI")
        try:
            meta, source = read_png_settings(upload)
            if source == "headhunter":
                settings = Settings.from_metadata(meta, self.layout.model_type)
            else:
                settings = (current or self.defaults).with_shared(meta, self.layout.model_type)
        except (OSError, ValueError, TypeError) as err:  # JSON errors are ValueErrors
            raise gr.Error(f"PNG: {err}".replace(str(upload), "this PNG")) from None
        self.parse_heads(settings.heads)
        if source != "headhunter":
            gr.Info(f"loaded what this {source} PNG shares: prompt, negative prompt, seed, steps, size, CFG "
                    "(the heads stay)")
        elif meta.get("model") not in (None, self.model_name):
            gr.Warning(f"this PNG was made with {meta['model']}; its settings are loaded for {self.model_name}")
        return settings.values()

    def save_pair(self, settings: Settings, heads: HeadSet, kwargs: dict, unguided: Image.Image,
                  guided: Image.Image) -> list[str]:
        """Both images as PNGs carrying their full settings (the CLI's metadata), for download."""
        folder = Path(tempfile.mkdtemp(prefix="headhunter-studio-"))
        base = self._record(settings, kwargs)
        stem = f"{re.sub(r'[^a-z0-9]+', '-', settings.prompt.lower()).strip('-')[:40] or 'image'}-s{settings.seed}"
        files = []
        for image, name, pag_heads in ((unguided, "unguided", None), (guided, "guided", str(heads))):
            record = {**base, "pag_heads": pag_heads}
            files.append(str(save_png(image, folder / f"{stem}-{name}.png", record)))
            with_settings(image, record)  # what the page shows carries them too
        return files

    def _record(self, settings: Settings, kwargs: dict) -> dict:
        """The metadata of an image made with ``settings`` (the command line's, without the heads)."""
        return {"model": self.model_name, "prompt": settings.prompt, "seed": settings.seed,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}

    def snippets(self, prompt: str, seed: int, heads: HeadSet, kwargs: dict) -> tuple[str, str]:
        """The settings as Python (runnable as is) and as a ``headhunter generate`` line."""
        cls = type(self.pipe).__name__
        device = self.pipe.device.type
        args = ",\n    ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
        modular = isinstance(self.pipe, HeadHunterModularPipeline)
        if self.builtin is not None and modular:
            load = (f"from headhunter.testing import tiny_modular_pipeline\n\n"
                    f"pipe = tiny_modular_pipeline({self.layout.model_type!r}).to({device!r})\n")
        elif self.builtin is not None:
            maker = "toy_pipeline" if self.model_name.lower() in TOY_MODELS else "tiny_pipeline"
            load = f"from headhunter.testing import {maker}\n\npipe = {maker}({self.model_name!r}).to({device!r})\n"
        elif modular:
            load = (f"from diffusers import ModularPipeline\nfrom headhunter.pipelines import {cls}\n\n"
                    f"modular = ModularPipeline.from_pretrained({self.model_name!r})\n"
                    f"modular.load_components(dtype={self.pipe.transformer.dtype})\n"
                    f"pipe = {cls}(modular, name_or_path={self.model_name!r}).to({device!r})\n")
        else:
            load = (f"from headhunter.pipelines import {cls}\n\n"
                    f"pipe = {cls}.from_pretrained({self.model_name!r}, torch_dtype={self.pipe.transformer.dtype}).to({device!r})\n")
        python = (f"import torch\n{load}image = pipe(\n    {prompt!r},\n"
                  f"    generator=torch.Generator({device!r}).manual_seed({seed}),\n"
                  f"    pag_heads={str(heads)!r},\n    {args},\n).images[0]\n")
        cfg = kwargs.get("true_cfg_scale", kwargs.get("guidance_scale"))
        parts = ["headhunter", "generate", "--model", self.model_name, "--prompt", prompt, "--seed", str(seed),
                 "--steps", str(kwargs["num_inference_steps"]), "--size", _size_text(kwargs["width"], kwargs["height"]),
                 "--cfg", str(cfg),
                 "--heads", str(heads), "--pag-scale", str(kwargs["pag_scale"]), "--softness", str(kwargs["pag_softness"]),
                 "--target", kwargs["pag_target"], "--scope", kwargs["pag_scope"],
                 "--interval", ",".join(str(x) for x in kwargs["pag_interval"])]
        if self.flux:
            parts += ["--flux-guidance", str(kwargs["guidance_scale"])]
        if kwargs.get("pag_adaptive_scale"):
            parts += ["--adaptive-scale", str(kwargs["pag_adaptive_scale"])]
        if kwargs.get("pag_reuse", 1) != 1:
            parts += ["--pag-reuse", str(kwargs["pag_reuse"])]
        if kwargs.get("pag_mode", "cond") != "cond":
            parts += ["--pag-mode", kwargs["pag_mode"]]
        if kwargs.get("negative_prompt"):
            parts += ["--negative-prompt", kwargs["negative_prompt"]]
        return python, shlex.join(parts)

    # --- atlas and XY ---------------------------------------------------------------------------------------------
    def atlas(self, settings: Settings, layer: float, request: Any = None, progress: Any = None) -> list:
        """Every head of one layer perturbed alone, in batches of per-image plans; Stop ends it between steps and
        keeps the heads done."""
        settings = self._checked(settings)
        layer = int(layer)
        if not 0 <= layer < self.layout.num_layers:
            raise gr.Error(f"Layer: {layer} is out of range; this model has {self.layout.describe()}")
        kwargs = self._kwargs(settings)
        base = self._record(settings, kwargs)
        heads: list[int | None] = [None, *range(self.layout.num_heads)]  # the unguided reference tile first
        gallery: list = []
        stop = self._switch(request, "images")
        try:
            for first in range(0, len(heads), IMAGES_PER_CALL):
                chunk = heads[first : first + IMAGES_PER_CALL]
                desc = f"layer {layer}: images {first + 1}–{first + len(chunk)} of {len(heads)}"

                def on_step(step: int, desc: str = desc) -> None:
                    if progress is not None:
                        progress((step, settings.steps), desc=desc, unit="steps")

                images = self._run([settings.prompt] * len(chunk), [settings.seed] * len(chunk),
                                   [None if h is None else [(layer, h)] for h in chunk], kwargs, stop, on_step)
                for image, h in zip(images, chunk):
                    name = "unguided" if h is None else f"L{layer}H{h}"
                    gallery.append((with_settings(image, {**base, "pag_heads": None if h is None else name}), name))
        except Stopped as err:
            gr.Warning(f"Atlas {err}; showing the {max(len(gallery) - 1, 0)} heads done")
        finally:
            self._release(request, "images", stop)
        return gallery

    def atlas_pick(self, text: str, caption: str | None) -> str:
        """The Heads field after a click on an atlas tile: its head added, or removed when it is there already."""
        heads = self.parse_heads(text)
        if not caption or caption == "unguided":
            return str(heads)
        head = next(iter(HeadSet.parse(caption)))
        return str(toggle_head(self.layout, heads, head.layer, head.head))

    def xy(self, settings: Settings, rows_text: str, axis: str, values_text: str, request: Any = None,
           progress: Any = None) -> tuple:
        """Head sets (one per line of ``rows_text``: a spec, a preset name, or ``none``) × values of ``axis``, one
        labelled grid image (and its PNG with the settings). Each column is one batched call."""
        settings = self._checked(settings)
        lines = [line.strip() for line in (rows_text or "").splitlines() if line.strip()]
        if not lines:
            raise gr.Error("XY rows: one head set per line (a spec, a preset name, or none)")
        if len(lines) > MAX_CELLS:
            raise gr.Error(f"XY rows: at most {MAX_CELLS}")
        rows = [HeadSet() if line.lower() == "none" else self.parse_heads(line) for line in lines]
        try:
            values = parse_axis_values(axis, values_text)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        try:
            columns_settings = [self._checked(column_settings(settings, axis, values, c)) for c in range(len(values))]
        except ValueError as err:
            raise gr.Error(str(err)) from None
        stop = self._switch(request, "images")
        columns: list[list[Image.Image]] = []
        try:
            for c, column in enumerate(columns_settings):
                kwargs = self._kwargs(column)
                images: list[Image.Image] = []
                for first in range(0, len(rows), IMAGES_PER_CALL):
                    chunk = rows[first : first + IMAGES_PER_CALL]
                    images += self._run([column.prompt] * len(chunk), [column.seed] * len(chunk), chunk, kwargs, stop)
                    if progress is not None:
                        progress((c * len(rows) + first + len(chunk), len(values) * len(rows)), desc="XY", unit="images")
                columns.append(images)
        except Stopped as err:
            raise gr.Error(f"XY {err}") from None
        finally:
            self._release(request, "images", stop)
        row_labels = [str(heads) or "no heads (unguided)" for heads in rows]
        column_labels = [axis_label(axis, value) for value in values]
        grid = compose_grid([[columns[c][r] for c in range(len(values))] for r in range(len(rows))], row_labels,
                            column_labels)
        meta = {**self._record(settings, self._kwargs(settings)),
                "xy": {"rows": row_labels, "axis": axis, "values": values}}
        path = save_png(grid, Path(tempfile.mkdtemp(prefix="headhunter-xy-")) / "xy-grid.png", meta)
        with_settings(grid, meta)  # the grid the page shows carries them as its download does
        note = f"{len(rows)} head sets × {len(values)} values of {axis}: {len(rows) * len(values)} images"
        return grid, str(path), note

    # --- cost, before starting ------------------------------------------------------------------------------------
    def mode_cost(self, settings: Settings) -> str:
        """Transformer passes per step of the guided image with these settings (against the exact mode's and the
        unguided image's), and the seconds per step last measured with them (a Generate runs both images)."""
        try:
            settings = settings.checked()
        except ValueError as err:
            return f"Cost: — ({err})"
        kwargs = self._kwargs(settings)
        cfg = classifier_free_guidance_on(kwargs, self.layout.model_type)
        steps, interval = settings.steps, (settings.start, settings.end)
        passes = passes_per_step(steps, interval, settings.reuse, settings.mode, cfg)
        exact = passes_per_step(steps, interval, 1, "cond", cfg)
        text = f"Cost: {passes:.2f} transformer passes per step (exact {exact:.2f}, unguided {1 + cfg:.0f})"
        measured = self._seconds_per_step.get(_cost_key(kwargs))
        if measured is not None:
            text += f"; measured {measured:.3f} s per step of an unguided + guided pair (last Generate)"
        return text

    def _estimate(self, images: int) -> str:
        if self._seconds_per_image is None:
            return f"{images} images (no speed measured yet: generate once for an estimate)"
        seconds = images * self._seconds_per_image
        duration = f"{seconds:.1f} s" if seconds < 10 else f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
        return f"{images} images, about {duration} at the last measured {self._seconds_per_image:.2f} s per image"

    def atlas_cost(self, layer: float) -> str:
        return f"Cost: {self._estimate(self.layout.num_heads + 1)}"  # and the unguided reference

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
        return f"Cost: {self._estimate(ws.greedy_images(candidates, len(prompts) * seed_count, top_k, rounds))}"

    def search_uses(self, settings: Settings) -> str:
        """The left-panel settings a search takes, as the Search tab shows them."""
        try:
            settings = settings.checked()
        except ValueError as err:
            return f"Uses: — ({err})"
        return "Uses: " + self._describe_search(settings, self._search_call(settings)[0])

    # --- search --------------------------------------------------------------------------------------------------
    def objectives(self) -> list[str]:
        """The registered scorers, for the objective menu (a spec such as ``clip:golden hour`` can be typed too)."""
        return sorted(available_scorers())

    def _search_call(self, settings: Settings) -> tuple[dict, float | None]:
        """The search's extra pipeline arguments and guidance scale from the left panel."""
        extra: dict[str, Any] = {}
        guidance = None  # SD3: CFG off unless asked; FLUX: its distilled guidance
        negative = settings.negative.strip()
        if self.builtin is not None:
            extra.update(self.builtin.call)
        if self.flux:
            guidance = settings.flux_guidance
            if settings.cfg > 1 and negative:
                extra.update(true_cfg_scale=settings.cfg, negative_prompt=negative)
        else:
            guidance = settings.cfg
            if settings.cfg > 1 and negative:
                extra["negative_prompt"] = negative
        if settings.adaptive:
            extra["pag_adaptive_scale"] = settings.adaptive
        if settings.reuse != 1:
            extra["pag_reuse"] = settings.reuse
        if settings.mode != "cond":
            extra["pag_mode"] = settings.mode
        return extra, guidance

    def _describe_search(self, settings: Settings, extra: dict) -> str:
        cfg_name = "true CFG" if self.flux else "CFG"
        text = (f"steps {int(settings.steps)}, size {settings.width}×{settings.height}, {cfg_name} {float(settings.cfg):g}"
                f"{' with the negative prompt' if 'negative_prompt' in extra else ''}")
        if self.flux:
            text += f", FLUX guidance {float(settings.flux_guidance):g}"
        text += (f", PAG scale {float(settings.pag_scale):g}, softness {float(settings.softness):g}, "
                 f"target {settings.target}, scope {settings.scope}")
        if settings.adaptive:
            text += f", adaptive scale {float(settings.adaptive):g}"
        if settings.reuse != 1:
            text += f", reuse {settings.reuse}"
        if settings.mode != "cond":
            text += f", mode {settings.mode}"
        return text

    def search(self, objective: str, style: str, contents: str, seeds: str, top_k: float, rounds: float,
               settings: Settings, run_name: str = "", request: Any = None, progress: Any = None) -> Iterator[tuple]:
        """A HeadHunter search in the workspace run ``run_name`` (a new name, or a stopped run's to resume it).
        Yields (status, heat map, ranking, selected heads, preset menu, run list) while it runs (the status line is
        its progress; ``progress`` is unused)."""
        prompts = [line.strip() for line in (contents or "").splitlines() if line.strip()]
        if not prompts:
            raise gr.Error("Content prompts: give at least one, one per line")
        if style and style.strip():
            prompts = [f"{style.strip()}, {p}" for p in prompts]
        try:
            seed_list = [int(s) for s in str(seeds).split(",") if s.strip()] or [0]
        except ValueError:
            raise gr.Error("Seeds: integers joined by commas, e.g. 0,1") from None
        try:
            settings = settings.checked()
            name = ws.check_name(run_name, "Run name") if (run_name or "").strip() else _new_run_name()
        except ValueError as err:
            raise gr.Error(str(err)) from None
        if not (objective or "").strip():
            raise gr.Error("Objective: choose one")
        extra, guidance = self._search_call(settings)
        used = self._describe_search(settings, extra)
        arguments = dict(objective=objective.strip(), prompts=prompts, seeds=seed_list, top_k=int(top_k),
                         rounds=int(rounds), num_inference_steps=settings.steps, height=settings.height,
                         width=settings.width, pag_scale=settings.pag_scale, pag_softness=settings.softness,
                         pag_target=settings.target, pag_scope=settings.scope, guidance_scale=guidance,
                         model_name=self.model_name, extra_call_kwargs=extra or None)
        yield from self._drive(name, arguments, f"with {used}", request)

    def run_form(self, run_name: str) -> tuple:
        """The Search form as a listed run was started: objective, style (in its prompts), content prompts, seeds,
        k and rounds."""
        if not (run_name or "").strip():
            raise gr.Error("Resume: choose a run in the list first")
        try:
            config = ws.read_config(self.workspace.run_dir(run_name))
        except ValueError as err:
            raise gr.Error(f"Resume {run_name!r}: {err}") from None
        prompts = list(dict.fromkeys(prompt for prompt, _ in config.pairs))
        seeds = list(dict.fromkeys(seed for _, seed in config.pairs))
        return (config.objective, "", "\n".join(prompts), ",".join(str(s) for s in seeds), config.top_k,
                config.rounds)

    def resume(self, run_name: str, request: Any = None) -> Iterator[tuple]:
        """Resume a workspace run with the settings it was started with (whatever the page shows now)."""
        if not (run_name or "").strip():
            raise gr.Error("Resume: choose a run in the list first")
        try:
            run_dir = self.workspace.run_dir(run_name)
            config = ws.read_config(run_dir)
            if config.model != self.model_name:
                raise ValueError(f"it was run on {config.model}; this studio has {self.model_name}")
            arguments = ws.search_arguments(config)
        except ValueError as err:
            raise gr.Error(f"Resume {run_name!r}: {err}") from None
        yield from self._drive(run_dir.name, arguments, "with its own settings", request)

    def _drive(self, name: str, arguments: dict, used: str, request: Any) -> Iterator[tuple]:
        run_dir = self.workspace.run_dir(name)
        with self._guard:
            if name in self._running_runs:
                raise gr.Error(f"Run name: {name} is running already")
            self._running_runs.add(name)
        stop = self._switch(request, "search")
        try:
            try:
                hunter = HeadHunter(self.pipe, run_dir=run_dir, batch_size=IMAGES_PER_CALL, should_stop=stop.is_set,
                                    progress=False, **arguments)
            except ValueError as err:
                raise gr.Error(f"Search: {err}") from None
            config = hunter.config
            total = ws.config_images(config)
            state: dict[str, Any] = {}

            def work() -> None:
                try:
                    state["result"] = hunter.run()
                except Exception as err:  # reported in the page below
                    state["error"] = err

            thread = threading.Thread(target=work, daemon=True)
            started, before = time.perf_counter(), ws.scored(run_dir) if run_dir.is_dir() else 0
            thread.start()
            try:
                shown = -1  # scores behind the heat map and ranking on the page
                while thread.is_alive():
                    thread.join(timeout=0.5)
                    done, *round_scores = self._round_scores(run_dir, config)
                    line = _progress_line(done, total, time.perf_counter() - started, before,
                                          ws.ranking_rows(*round_scores))
                    # the heat map, the ranking and the run list change only when scores arrive
                    view = self._live(run_dir, config, round_scores) if done != shown else (gr.skip(), gr.skip())
                    runs = self.runs_table() if shown < 0 else gr.skip()
                    shown = done
                    yield (f"**{name}** {line} — {used}", *view, gr.skip(), gr.skip(), runs)
            finally:
                stop.set()  # the generator closed (page gone, event cancelled): end after the batch in flight
                thread.join()
        finally:
            self._release(request, "search", stop)
            with self._guard:
                self._running_runs.discard(name)
        error = state.get("error")
        if isinstance(error, SearchCancelled) and not (run_dir / "config.json").is_file():
            # stopped within its first batch: the search kept nothing (no run folder to list or resume)
            yield (f"**{name}** stopped before its first batch was scored: nothing was kept; press Search to start "
                   "it again", gr.skip(), gr.skip(), gr.skip(), gr.skip(), self.runs_table())
            return
        if isinstance(error, SearchCancelled):
            yield (f"**{name}** stopped — resumable: {ws.scored(run_dir)} of {total} images scored; choose it in the "
                   "run list and press Resume", *self._live(run_dir, config), gr.skip(), gr.skip(), self.runs_table())
            return
        if error is not None:
            raise gr.Error(f"Search failed: {error}")
        result = state["result"]
        preset = f"{ws.RUN_PREFIX}{name}"
        yield (f"**{name}** done: {result.images_generated} images; the heads are the preset {preset}",
               *self._live(run_dir, config), str(result.selected), gr.update(choices=self.preset_names(), value=preset),
               self.runs_table())

    def _round_scores(self, run_dir: Path, config: Any) -> tuple[int, dict, dict]:
        """Images scored so far; mean score and pairs scored per head in the latest round."""
        if not run_dir.is_dir():
            return 0, {}, {}
        return ws.live_round(run_dir, config)

    def _live(self, run_dir: Path, config: Any, round_scores: tuple[dict, dict] | None = None) -> tuple[Any, list[list]]:
        """The heat map and ranking of the latest round, from the scores logged so far."""
        means, counts = self._round_scores(run_dir, config)[1:] if round_scores is None else round_scores
        if not means:
            return gr.skip(), []
        return ws.live_heatmap(self.layout, means, ws.selected_so_far(run_dir, config)), ws.ranking_rows(means, counts)

    def runs_table(self) -> list[list]:
        """The workspace's runs: name, status, objective, heads so far, images scored."""
        with self._guard:
            running = set(self._running_runs)
        return [[r.name, r.status, r.objective, r.heads, f"{r.images} / {r.total}" if r.total else str(r.images)]
                for r in self.workspace.runs(running)]

    def export_chosen(self, run_name: str) -> str:
        """A finished workspace run exported (``headhunter export``) and zipped, for download: unzipped, the folder
        loads with ``HeadHunterGuidance.from_pretrained`` and as ``pag_heads``."""
        from headhunter.sharing import export_run

        if not (run_name or "").strip():
            raise gr.Error("Export: choose a run in the list first")
        try:
            run_dir = self.workspace.run_dir(run_name)
            folder = Path(tempfile.mkdtemp(prefix="headhunter-export-")) / run_dir.name
            export_run(run_dir, folder)
        except ValueError as err:
            raise gr.Error(f"Export {run_name!r}: {err}") from None
        return shutil.make_archive(str(folder), "zip", folder.parent, folder.name)

    def show_run(self, run_name: str) -> tuple:
        """A listed run's heat map, ranking and heads so far."""
        try:
            run_dir = self.workspace.run_dir(run_name)
            config = ws.read_config(run_dir)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        heads = ws.selected_so_far(run_dir, config)
        return (*self._live(run_dir, config), str(heads))


def _size_text(width: int, height: int) -> str:
    """The command line's ``--size``: N for a square, else WxH."""
    return str(width) if width == height else f"{width}x{height}"


def _cost_key(kwargs: dict) -> tuple:
    """What a step's cost depends on, among a call's arguments."""
    return tuple(str(kwargs.get(k)) for k in ("num_inference_steps", "height", "width", "guidance_scale",
                                               "true_cfg_scale", "pag_interval", "pag_reuse", "pag_mode"))


def _open_with_settings(path: str) -> Image.Image:
    """A headhunter PNG as an RGB image that still carries its settings."""
    with Image.open(path) as image:
        return with_settings(image.convert("RGB"), read_settings(path))


def difference(unguided: Image.Image, guided: Image.Image) -> tuple[Image.Image, str]:
    """|guided − unguided| amplified to the full range (small images enlarged pixel-exactly), and its note."""
    diff = np.abs(np.asarray(guided, dtype=np.int16) - np.asarray(unguided, dtype=np.int16)).astype(np.float32)
    gain = 255.0 / max(1.0, float(diff.max()))
    image = Image.fromarray(np.clip(diff * gain, 0, 255).astype(np.uint8))
    if image.width < 256:
        factor = 256 // image.width
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image, f"|guided − unguided|, amplified ×{gain:.1f}; mean change {diff.mean():.2f} of 255"


def side_by_side(unguided: Image.Image, guided: Image.Image) -> Image.Image:
    """A pair as one image, unguided left and guided right (a batch's tile); it carries the guided image's
    settings."""
    pair = Image.new("RGB", (unguided.width + guided.width + 4, max(unguided.height, guided.height)), "white")
    pair.paste(unguided.convert("RGB"), (0, 0))
    pair.paste(guided.convert("RGB"), (unguided.width + 4, 0))
    return with_settings(pair, {**settings_of(guided), "image": "unguided | guided"})


def history_strip(history: list) -> list[tuple[str, str]]:
    """The history gallery: each generation's guided image with its seed and heads."""
    strip = []
    for entry in history:
        values = dict(zip(("prompt", "negative", "seed"), entry["settings"]))
        heads = entry["settings"][FIELDS.index("heads")] or "no heads"
        short = heads if len(heads) <= 14 else f"{len(HeadSet.parse(heads))} heads"  # a caption is one short line
        strip.append((entry["files"][1], f"seed {values['seed']} · {short}"))
    return strip


def _progress_line(done: int, total: int, elapsed: float, before: int, ranking: list[list]) -> str:
    """Images done of the total, time so far and to go (from this session's speed), the best head so far."""
    line = f"running… {done} / {total} images, {elapsed:.0f} s"
    if done > before:
        line += f", about {elapsed / (done - before) * (total - done):.0f} s to go"
    if ranking and ranking[0][1] != "failed":
        line += f"; best head so far {ranking[0][0]} ({ranking[0][1]:.4g} over {ranking[0][2]} pairs)"
    return line


def _new_run_name() -> str:
    return f"search-{time.strftime('%Y%m%d-%H%M%S')}-{random.randrange(16 ** 4):04x}"


def _session(request: Any) -> str:
    return getattr(request, "session_hash", None) or "local"
