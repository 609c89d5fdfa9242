"""Running an evaluation: every setting × prompt × seed generated (several prompts per call), saved as PNG with its
full settings, scored by every metric on the saved image, summarised and reported. Resumable and shardable.

Every image is keyed by a fingerprint of everything that determines it (model, dtype, the setting's resolved pipeline
arguments, prompt text, seed); every score by the image's fingerprint and the metric. A re-run reuses exactly what
still matches, regenerates what changed (the PNG is replaced and its old rows are never reported again) and scores
new metrics on the images on disk.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..distributed import process_info
from ..jsonlog import append_records, read_records, repair_log
from ..metadata import frame_paths, save_png, save_video
from .inputs import ALL, PromptRow
from .report import render_report
from .settings import SETTING_KEYS, Setting
from .stats import bootstrap_ci, paired_comparison

__all__ = ["Evaluation", "EvaluationResult"]

LOG = "results.jsonl"
# What a re-run with --fresh removes: the run's own outputs, never anything else in the folder.
RUN_FILES = ("results*.jsonl", "results.csv", "results.parquet", "summary.csv", "report.html")
# Pipeline arguments that enter an image's fingerprint (with the pipeline's defaults when a setting omits them).
RESOLVED_ARGUMENTS = sorted({argument for argument, _ in SETTING_KEYS.values()} | {"max_sequence_length"})


@dataclass
class EvaluationResult:
    rows: list[dict]
    summary: list[dict]
    out_dir: Path
    generated: int
    notes: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_") or "setting"


def _digest(data: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _png_state(path: Path) -> tuple[str, str | None]:
    """(``"missing"``, ``"damaged"`` or ``"ok"``, the fingerprint in its headhunter metadata or None)."""
    from PIL import Image

    if not path.exists():
        return "missing", None
    try:
        with Image.open(path) as image:
            image.load()  # a truncated or damaged file fails here
            text = getattr(image, "text", {}).get("headhunter")
        return "ok", (json.loads(text).get("fingerprint") if text else None)
    except (OSError, SyntaxError, ValueError, AttributeError):
        return "damaged", None


class Evaluation:
    """Generate and score ``settings`` × ``prompts`` × ``seeds`` into ``out_dir``.

    Args:
        pipe: a HeadHunter pipeline.
        prompts: prompt strings or :class:`PromptRow` (a row's own seed replaces ``seeds``).
        seeds: seeds for rows without their own (duplicates are merged).
        settings: named pipeline arguments (:func:`parse_setting`).
        metrics: scorer specs; each is loaded once.
        out_dir: the run directory; images and scores whose fingerprints still match are reused, the rest redone.
        defaults: pipeline arguments every setting starts from (a setting's own values win).
        model_name: recorded in every PNG's metadata and in the fingerprints.
        batch_size: images per pipeline call (several prompts of one setting).
        commands: the command lines that make this run; stored with every image and shown in the report.
        baseline: a setting name; the summary then holds each other setting's paired difference to it.
        fresh: remove the run's earlier results and images first.
        log: receives one line per setting saying what is reused and what is (re)generated; default: print when
            ``progress`` is on.
    """

    def __init__(self, pipe: Any, prompts: Sequence[PromptRow | str], seeds: Sequence[int], settings: Sequence[Setting],
                 metrics: Sequence[str], out_dir: str | os.PathLike, *, defaults: dict | None = None,
                 model_name: str = "", batch_size: int = 4, scorer_options: dict | None = None, progress: bool = True,
                 commands: Sequence[str] = (), baseline: str | None = None, fresh: bool = False,
                 log: Callable[[str], None] | None = None):
        from ..arguments import PAGArguments, check_image_size, classifier_free_guidance_on
        from ..scorers.base import parse_spec

        self.pipe = pipe
        self.rows_in = [p if isinstance(p, PromptRow) else PromptRow(str(p)) for p in prompts]
        if not self.rows_in:
            raise ValueError("no prompts to evaluate")
        self.seeds = list(dict.fromkeys(int(s) for s in seeds))
        self.settings = list(settings)
        if not self.settings:
            raise ValueError("give at least one setting")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names) or len({_slug(n) for n in names}) != len(names):
            raise ValueError(f"setting names must be distinct: {names}")
        if baseline is not None and baseline not in names:
            raise ValueError(f"--baseline {baseline!r} is not one of the settings: {', '.join(names)}")
        self.baseline = baseline
        self.categories = list(dict.fromkeys(r.category for r in self.rows_in if r.category is not None))
        self.metrics = list(dict.fromkeys(metrics))
        if not self.metrics:
            raise ValueError("give at least one metric")
        for metric in self.metrics:
            parse_spec(metric)  # unknown names and bad specs fail here, before any image
        self.defaults = dict(defaults or {})
        for setting in self.settings:  # bad heads, targets, scales, steps and sizes fail here too
            kw = {**self.defaults, **setting.kwargs}
            try:
                PAGArguments.from_call(
                    pipe.head_layout, pag_heads=kw.get("pag_heads"), pag_scale=kw.get("pag_scale", 3.0),
                    pag_softness=kw.get("pag_softness", 1.0), pag_target=kw.get("pag_target", "identity"),
                    pag_scope=kw.get("pag_scope", "joint"), pag_interval=kw.get("pag_interval", (0.0, 1.0)),
                    pag_adaptive_scale=kw.get("pag_adaptive_scale", 0.0),
                    pag_applied_layers=kw.get("pag_applied_layers"), num_prompts=1, num_images_per_prompt=1,
                    pag_reuse=kw.get("pag_reuse", 1), pag_mode=kw.get("pag_mode", "cond"),
                ).check_classifier_free_guidance(classifier_free_guidance_on(kw, pipe.head_layout.model_type))
            except ValueError as err:
                raise ValueError(f"setting {setting.name!r}: {err}") from None
            steps = kw.get("num_inference_steps", 1)
            if int(steps) < 1:
                raise ValueError(f"setting {setting.name!r}: steps must be at least 1, got {steps}")
            try:
                check_image_size(pipe, kw.get("height"), kw.get("width"))
            except ValueError as err:
                raise ValueError(f"setting {setting.name!r}: {err}") from None
        self.out = Path(out_dir)
        self.model_name = model_name
        self.dtype = str(pipe.transformer.dtype).removeprefix("torch.")
        self.batch_size = max(1, int(batch_size))
        self.scorer_options = dict(scorer_options or {})
        self.progress = progress
        self.commands = list(commands)
        self.fresh = fresh
        self.log = log if log is not None else (print if progress else (lambda line: None))
        self.rank, self.world, self.barrier = process_info()
        self._resolved = {s.name: self.call_settings(s) for s in self.settings}

    # --- what determines an image and a score ---------------------------------------------------------------------
    def call_settings(self, setting: Setting) -> dict[str, Any]:
        """The pipeline arguments of ``setting``, resolved: defaults, then the setting's own values, then the
        pipeline's own defaults for everything a setting can change; heads in canonical form (a preset file is read,
        so editing it changes the fingerprint). This is what PNG metadata records and fingerprints hash."""
        from ..heads import HeadSet

        kw = {**self.defaults, **setting.kwargs}
        parameters = inspect.signature(self.pipe.__call__).parameters
        for name in RESOLVED_ARGUMENTS:
            if name not in kw and name in parameters:
                kw[name] = parameters[name].default
        default_size = getattr(self.pipe, "default_sample_size", 0) * getattr(self.pipe, "vae_scale_factor", 0)
        for side in ("width", "height"):
            if kw.get(side) is None and default_size:
                kw[side] = default_size
        if kw.get("pag_heads") is not None:
            kw["pag_heads"] = str(HeadSet.coerce(kw["pag_heads"]))
        if kw.get("pag_interval") is not None:
            kw["pag_interval"] = [float(v) for v in kw["pag_interval"]]
        return kw

    def image_fingerprint(self, setting: Setting, prompt: str, seed: int) -> str:
        return _digest({"model": self.model_name, "dtype": self.dtype, "call": self._resolved[setting.name],
                        "prompt": prompt, "seed": seed})

    def metric_fingerprint(self, metric: str) -> str:
        return _digest({"metric": metric, "options": self.scorer_options}, 12)

    # --- the work list -------------------------------------------------------------------------------------------
    def items(self) -> list[dict]:
        out = []
        for setting in self.settings:
            for index, row in enumerate(self.rows_in):
                seeds = [row.seed] if row.seed is not None else self.seeds
                for seed in seeds:
                    stem = f"images/{_slug(setting.name)}/{index:03d}-s{seed}"
                    item = {"setting": setting.name, "prompt_index": index, "prompt": row.prompt,
                            "category": row.category or "", "seed": seed, "image": f"{stem}.png",
                            "fingerprint": self.image_fingerprint(setting, row.prompt, seed)}
                    if (self._resolved[setting.name].get("num_frames") or 1) > 1:  # a video: its first frame, all
                        item["video"] = f"{stem}.webp"  # frames in the folder ``stem``, and the animation
                    out.append(item)
        return out

    def _log_path(self) -> Path:
        return self.out / (LOG if self.world == 1 else f"results.rank{self.rank}-of-{self.world}.jsonl")

    def _read_log(self) -> tuple[dict[str, dict], dict[tuple[str, str], float]]:
        """(image records by fingerprint, score values by (image fingerprint, metric fingerprint)). Records from
        earlier formats, without fingerprints, are ignored: their images are checked and redone like any other."""
        images: dict[str, dict] = {}
        scores: dict[tuple[str, str], float] = {}
        for record in read_records(sorted(self.out.glob("results*.jsonl"))):
            if record.get("kind") == "image":
                images[record["fingerprint"]] = record
            elif record.get("kind") == "score":
                scores.setdefault((record["image_fingerprint"], record["metric_fingerprint"]), record["value"])
        return images, scores

    def _plan(self) -> tuple[list[dict], list[dict]]:
        """(items whose image must be generated, items that only need scores), and one line per setting."""
        images, scores = self._read_log()
        self._logged_images, self._known_scores = set(images), set(scores)
        metric_fps = [self.metric_fingerprint(m) for m in self.metrics]
        items = self.items()
        generate, score = [], []
        for setting in self.settings:
            counts = {"reused": 0, "new": 0, "changed": 0, "damaged": 0}
            to_score = 0
            for it in (it for it in items if it["setting"] == setting.name):
                state, on_disk = _png_state(self.out / it["image"])
                if on_disk == it["fingerprint"]:
                    counts["reused"] += 1
                    if any((it["fingerprint"], m) not in scores for m in metric_fps):
                        score.append(it)
                        to_score += 1
                    continue
                counts[{"missing": "new", "damaged": "damaged", "ok": "changed"}[state]] += 1
                generate.append(it)
            parts = [f"{counts['reused']} reused"]
            if counts["new"]:
                parts.append(f"{counts['new']} new")
            if counts["changed"]:
                parts.append(f"{counts['changed']} regenerated (settings, prompt or model changed)")
            if counts["damaged"]:
                parts.append(f"{counts['damaged']} regenerated (unreadable on disk)")
            if to_score:
                parts.append(f"{to_score} reused image(s) to score")
            self._notes.append(f"{setting.name}: " + ", ".join(parts))
        return generate, score

    # --- running -------------------------------------------------------------------------------------------------
    def run(self) -> EvaluationResult:
        from ..scorers import load_scorer

        self._notes: list[str] = []
        if self.rank == 0:
            if self.out.exists() and not self.out.is_dir():
                raise ValueError(f"--out {str(self.out)!r} is a file; name a folder")
            self.out.mkdir(parents=True, exist_ok=True)
            if self.fresh:
                self._remove_earlier_run()
        self.barrier()
        repair_log(self._log_path())
        scorers = {m: load_scorer(m, device=self.pipe.device, **self.scorer_options) for m in self.metrics}
        # Every process must split the same work list: read the logs and images only when all have stopped writing,
        # and start writing only when all have read.
        self.barrier()
        generate, score = self._plan()
        self.barrier()
        if self.rank == 0:
            for line in self._notes:
                self.log(line)
        mine = (generate + score)[self.rank :: self.world]
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), unit="img", desc="headhunter eval", dynamic_ncols=True)
        generated = 0
        by_setting = {s.name: s for s in self.settings}
        to_generate = {id(it) for it in generate}
        try:
            for setting in self.settings:
                queue = [it for it in mine if it["setting"] == setting.name]
                for start in range(0, len(queue), self.batch_size):
                    batch = queue[start : start + self.batch_size]
                    fresh = [it for it in batch if id(it) in to_generate]
                    records = []
                    if fresh:
                        seconds = self._generate(by_setting[setting.name], fresh) / len(fresh)
                        generated += len(fresh)
                        records += [self._image_record(it, seconds) for it in fresh]
                    records += [self._image_record(it, None) for it in batch
                                if id(it) not in to_generate and it["fingerprint"] not in self._logged_images]
                    records += self._score(batch, scorers)
                    append_records(self._log_path(), records)
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        self.barrier()
        rows = self._ordered_rows()
        summary = self._summary(rows)
        self.barrier()  # every process has read the logs before rank 0 rewrites them
        if self.rank == 0:
            self._compact_logs()
            self._write_outputs(rows, summary)
        self.barrier()
        return EvaluationResult(rows, summary, self.out, generated, list(self._notes))

    def _remove_earlier_run(self) -> None:
        for pattern in RUN_FILES:
            for path in self.out.glob(pattern):
                path.unlink()
        for setting_dir in (self.out / "images").glob("*"):
            for png in [*setting_dir.glob("*.png"), *setting_dir.glob("*.webp"), *setting_dir.glob("*/frame-*.png")]:
                png.unlink()

    def _image_record(self, it: dict, seconds: float | None) -> dict:
        return {"kind": "image", **{k: it[k] for k in ("fingerprint", "setting", "prompt_index", "prompt", "category",
                                                        "seed", "image")},
                "generation_seconds": seconds, "command": self.commands, "process": self.rank}

    def _score(self, batch: list[dict], scorers: dict) -> list[dict]:
        """Score records for the saved images of ``batch``: each metric only where the log has no score yet (a
        regenerated image has a new fingerprint, so it has none)."""
        from PIL import Image

        frames: dict[str, list] = {}  # an image is one frame; a video's score is the mean over its frames
        for it in batch:
            paths = frame_paths(self.out / it["image"]) if "video" in it else [self.out / it["image"]]
            frames[it["fingerprint"]] = []
            for path in paths:
                with Image.open(path) as image:
                    frames[it["fingerprint"]].append(image.convert("RGB"))
        records = []
        for metric, scorer in scorers.items():
            fp = self.metric_fingerprint(metric)
            todo = [it for it in batch if (it["fingerprint"], fp) not in self._known_scores]
            if not todo:
                continue
            flat = [(it, frame) for it in todo for frame in frames[it["fingerprint"]]]
            values = [float(v) for v in scorer([frame for _, frame in flat], [it["prompt"] for it, _ in flat])]
            first = 0
            for it in todo:
                count = len(frames[it["fingerprint"]])
                value = sum(values[first : first + count]) / count
                first += count
                records.append({"kind": "score", "image_fingerprint": it["fingerprint"], "metric": metric,
                                "metric_fingerprint": fp,
                                "value": value if math.isfinite(value) else None})  # no NaN in JSON
        return records

    def _generate(self, setting: Setting, items: list[dict]) -> float:
        kw = self._resolved[setting.name]
        call = dict(kw)
        if call.get("pag_interval") is not None:
            call["pag_interval"] = tuple(call["pag_interval"])
        device = "cpu" if self.pipe.device.type == "cpu" else self.pipe.device
        start = time.perf_counter()
        out = self.pipe([it["prompt"] for it in items],
                        generator=[torch.Generator(device=device).manual_seed(it["seed"]) for it in items],
                        output_type="pil", **call)
        elapsed = time.perf_counter() - start
        videos = getattr(out, "frames", None) or [None] * len(items)
        for it, image, frames in zip(items, out.images, videos):
            record = {"model": self.model_name, "dtype": self.dtype, "setting": setting.name, "prompt": it["prompt"],
                      "seed": it["seed"], "fingerprint": it["fingerprint"], **kw}
            if "video" in it:
                save_video(frames, self.out / it["image"], record)
            else:
                save_png(image, self.out / it["image"], record)
        return elapsed

    # --- outputs -------------------------------------------------------------------------------------------------
    def _ordered_rows(self) -> list[dict]:
        """One row per current item, from the records whose fingerprints match it; nothing else is ever reported."""
        images, scores = self._read_log()
        rows = []
        for it in self.items():
            record = images.get(it["fingerprint"])
            if record is None:
                continue
            row = {k: it[k] for k in ("setting", "prompt_index", "prompt", "category", "seed", "image", "video")
                   if k in it}
            for metric in self.metrics:
                row[metric] = scores.get((it["fingerprint"], self.metric_fingerprint(metric)))
                if row[metric] is None:
                    row[metric] = float("nan")
            row["generation_seconds"] = record.get("generation_seconds")
            row["fingerprint"] = it["fingerprint"]
            row["command"] = record.get("command") or []
            rows.append(row)
        return rows

    def _compact_logs(self) -> None:
        """Rewrite the logs as one ``results.jsonl`` that describes what is on disk: the latest image record of each
        image file (an earlier record for the same file describes a PNG that was replaced) and its scores."""
        latest: dict[str, dict] = {}
        scores: dict[tuple[str, str], dict] = {}
        logs = sorted(self.out.glob("results*.jsonl"))
        for record in read_records(logs):
            if record.get("kind") == "image":
                latest[record["image"]] = record
            elif record.get("kind") == "score":
                scores.setdefault((record["image_fingerprint"], record["metric_fingerprint"]), record)
        live = {record["fingerprint"] for record in latest.values()}
        kept = list(latest.values()) + [r for (fp, _), r in scores.items() if fp in live]
        tmp = self.out / (LOG + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.out / LOG)
        for path in logs:
            if path.name != LOG:
                path.unlink(missing_ok=True)

    def _summary(self, rows: list[dict]) -> list[dict]:
        """Per setting and metric: the mean with its interval (and the paired difference to the baseline); with
        categories, an overall row (category ``all``) followed by one row per category, in the prompt file's order."""
        groups: list[str | None] = [ALL, *self.categories] if self.categories else [None]
        summary = []
        for setting in self.settings:
            for metric in self.metrics:
                for category in groups:
                    def chosen(r: dict) -> bool:
                        return category in (None, ALL) or r["category"] == category

                    mine = [r for r in rows if r["setting"] == setting.name and chosen(r)]
                    values = [r[metric] for r in mine]
                    mean, low, high = bootstrap_ci(values)
                    entry = {"setting": setting.name, "metric": metric, "n": sum(v == v for v in values),
                             "mean": mean, "ci_low": low, "ci_high": high}
                    if category is not None:
                        entry["category"] = category
                    if self.baseline is not None and setting.name != self.baseline:
                        base = {(r["prompt_index"], r["seed"]): r[metric] for r in rows
                                if r["setting"] == self.baseline and chosen(r)}
                        pairs = [(r["prompt_index"], r[metric], base[(r["prompt_index"], r["seed"])]) for r in mine
                                 if (r["prompt_index"], r["seed"]) in base]
                        entry.update(paired_comparison(pairs))
                    summary.append(entry)
        return summary

    def _write_outputs(self, rows: list[dict], summary: list[dict]) -> None:
        videos = ["video"] if any("video" in row for row in rows) else []
        categories = ["category"] if self.categories else []
        columns = ["setting", "prompt_index", "prompt", *categories, "seed", "image", *videos, *self.metrics,
                   "generation_seconds", "fingerprint"]
        self._write_csv("results.csv", columns, rows)
        summary_columns = ["setting", "metric", *categories, "n", "mean", "ci_low", "ci_high"]
        if self.baseline is not None:
            summary_columns += ["baseline", "pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "win_rate"]
            summary = [{**row, "baseline": self.baseline if "diff_mean" in row else ""} for row in summary]
        self._write_csv("summary.csv", summary_columns, summary)
        try:
            import pandas  # noqa: F401  (pyarrow writes through pandas)
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            import pandas as pd

            pd.DataFrame(rows, columns=columns).to_parquet(self.out / "results.parquet")
        made_by = list(dict.fromkeys(line for row in rows for line in row["command"]))
        page = render_report(f"headhunter eval — {self.model_name}", self.settings, rows, summary, self.metrics,
                             made_by, latest=self.commands, baseline=self.baseline, categories=self.categories)
        tmp = self.out / "report.html.tmp"
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(self.out / "report.html")

    def _write_csv(self, name: str, columns: list[str], rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        tmp = self.out / f"{name}.tmp"
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        tmp.replace(self.out / name)

