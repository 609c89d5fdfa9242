"""Running an evaluation: every setting × prompt × seed generated (several prompts per call), saved as PNG with its
full settings, scored by every metric on the saved image, summarised and reported. Resumable and shardable."""

from __future__ import annotations

import csv
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..distributed import process_info
from ..jsonlog import append_records, read_records, repair_log
from ..metadata import save_png
from .inputs import PromptRow
from .report import render_report
from .settings import Setting
from .stats import bootstrap_ci

__all__ = ["Evaluation", "EvaluationResult"]


@dataclass
class EvaluationResult:
    rows: list[dict]
    summary: list[dict]
    out_dir: Path
    generated: int

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_") or "setting"


class Evaluation:
    """Generate and score ``settings`` × ``prompts`` × ``seeds`` into ``out_dir``.

    Args:
        pipe: a HeadHunter pipeline.
        prompts: prompt strings or :class:`PromptRow` (a row's own seed replaces ``seeds``).
        seeds: seeds for rows without their own.
        settings: named pipeline arguments (:func:`parse_setting`).
        metrics: scorer specs; each is loaded once.
        out_dir: the run directory; existing images and scores are reused, not recomputed.
        defaults: pipeline arguments every setting starts from (a setting's own values win).
        model_name: recorded in every PNG's metadata.
        batch_size: images per pipeline call (several prompts of one setting).
        commands: the command lines that regenerate this run (shown in the report).
    """

    def __init__(self, pipe: Any, prompts: Sequence[PromptRow | str], seeds: Sequence[int], settings: Sequence[Setting],
                 metrics: Sequence[str], out_dir: str | os.PathLike, *, defaults: dict | None = None,
                 model_name: str = "", batch_size: int = 4, scorer_options: dict | None = None, progress: bool = True,
                 commands: Sequence[str] = ()):
        from ..arguments import PAGArguments
        from ..scorers.base import parse_spec

        self.pipe = pipe
        self.rows_in = [p if isinstance(p, PromptRow) else PromptRow(str(p)) for p in prompts]
        if not self.rows_in:
            raise ValueError("no prompts to evaluate")
        self.seeds = [int(s) for s in seeds]
        self.settings = list(settings)
        if not self.settings:
            raise ValueError("give at least one setting")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names) or len({_slug(n) for n in names}) != len(names):
            raise ValueError(f"setting names must be distinct: {names}")
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("give at least one metric")
        for metric in self.metrics:
            parse_spec(metric)  # unknown names and bad specs fail here, before any image
        self.defaults = dict(defaults or {})
        for setting in self.settings:  # bad heads, targets, scales fail here too
            kw = {**self.defaults, **setting.kwargs}
            PAGArguments.from_call(
                pipe.head_layout, pag_heads=kw.get("pag_heads"), pag_scale=kw.get("pag_scale", 3.0),
                pag_softness=kw.get("pag_softness", 1.0), pag_target=kw.get("pag_target", "identity"),
                pag_scope=kw.get("pag_scope", "joint"), pag_interval=kw.get("pag_interval", (0.0, 1.0)),
                pag_adaptive_scale=kw.get("pag_adaptive_scale", 0.0), pag_applied_layers=kw.get("pag_applied_layers"),
                num_prompts=1, num_images_per_prompt=1,
            )
        self.out = Path(out_dir)
        self.model_name = model_name
        self.batch_size = max(1, int(batch_size))
        self.scorer_options = dict(scorer_options or {})
        self.progress = progress
        self.commands = list(commands)
        self.rank, self.world, self.barrier = process_info()

    # --- the work list -------------------------------------------------------------------------------------------
    def items(self) -> list[dict]:
        out = []
        for setting in self.settings:
            for index, row in enumerate(self.rows_in):
                for seed in ([row.seed] if row.seed is not None else self.seeds):
                    out.append({"setting": setting.name, "prompt_index": index, "prompt": row.prompt, "seed": seed,
                                "image": f"images/{_slug(setting.name)}/{index:03d}-s{seed}.png"})
        return out

    def _log_path(self) -> Path:
        return self.out / ("results.jsonl" if self.world == 1 else f"results.rank{self.rank}-of-{self.world}.jsonl")

    def _load_rows(self) -> dict[tuple, dict]:
        rows: dict[tuple, dict] = {}
        for row in read_records(sorted(self.out.glob("results*.jsonl"))):
            rows.setdefault((row["setting"], row["prompt_index"], row["seed"]), row)
        return rows

    # --- running -------------------------------------------------------------------------------------------------
    def run(self) -> EvaluationResult:
        from PIL import Image

        from ..scorers import load_scorer

        self.out.mkdir(parents=True, exist_ok=True)
        repair_log(self._log_path())
        scorers = {m: load_scorer(m, device=self.pipe.device, **self.scorer_options) for m in self.metrics}
        # Every process must split the same work list: read the logs only when all have stopped writing, and start
        # writing only when all have read.
        self.barrier()
        done = self._load_rows()
        self.barrier()
        todo = [it for it in self.items() if (it["setting"], it["prompt_index"], it["seed"]) not in done]
        mine = todo[self.rank :: self.world]
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), unit="img", desc="headhunter eval", dynamic_ncols=True)
        generated = 0
        by_setting = {s.name: s for s in self.settings}
        try:
            for setting in self.settings:
                queue = [it for it in mine if it["setting"] == setting.name]
                for start in range(0, len(queue), self.batch_size):
                    batch = queue[start : start + self.batch_size]
                    missing = [it for it in batch if not (self.out / it["image"]).is_file()]
                    seconds = 0.0
                    if missing:
                        seconds = self._generate(by_setting[setting.name], missing) / len(missing)
                        generated += len(missing)
                    rows = []
                    for it in batch:
                        with Image.open(self.out / it["image"]) as image:
                            rgb = image.convert("RGB")
                        row = {k: it[k] for k in ("setting", "prompt_index", "prompt", "seed", "image")}
                        for metric, scorer in scorers.items():
                            row[metric] = float(scorer([rgb], [it["prompt"]])[0])
                        row["generation_seconds"] = seconds if it in missing else None
                        rows.append(row)
                    append_records(self._log_path(), rows)
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        self.barrier()
        rows = self._ordered_rows()
        summary = self._summary(rows)
        if self.rank == 0:
            self._write_outputs(rows, summary)
        self.barrier()
        return EvaluationResult(rows, summary, self.out, generated)

    def call_settings(self, setting: Setting) -> dict[str, Any]:
        """The pipeline arguments of ``setting`` (defaults, then the setting's own), as written to PNG metadata."""
        kw = {**self.defaults, **setting.kwargs}
        if kw.get("pag_heads") is not None:
            kw["pag_heads"] = str(kw["pag_heads"])
        if "pag_interval" in kw:
            kw["pag_interval"] = list(kw["pag_interval"])
        return kw

    def _generate(self, setting: Setting, items: list[dict]) -> float:
        kw = self.call_settings(setting)
        call = dict(kw)
        if "pag_interval" in call:
            call["pag_interval"] = tuple(call["pag_interval"])
        device = "cpu" if self.pipe.device.type == "cpu" else self.pipe.device
        start = time.perf_counter()
        images = self.pipe([it["prompt"] for it in items],
                           generator=[torch.Generator(device=device).manual_seed(it["seed"]) for it in items],
                           output_type="pil", **call).images
        elapsed = time.perf_counter() - start
        for it, image in zip(items, images):
            save_png(image, self.out / it["image"], {"model": self.model_name, "setting": setting.name,
                                                     "prompt": it["prompt"], "seed": it["seed"], **kw})
        return elapsed

    # --- outputs -------------------------------------------------------------------------------------------------
    def _ordered_rows(self) -> list[dict]:
        done = self._load_rows()
        return [done[key] for key in ((it["setting"], it["prompt_index"], it["seed"]) for it in self.items()) if key in done]

    def _summary(self, rows: list[dict]) -> list[dict]:
        summary = []
        for setting in self.settings:
            mine = [r for r in rows if r["setting"] == setting.name]
            for metric in self.metrics:
                mean, low, high = bootstrap_ci([r[metric] for r in mine])
                summary.append({"setting": setting.name, "metric": metric, "n": len(mine), "mean": mean,
                                "ci_low": low, "ci_high": high})
        return summary

    def _write_outputs(self, rows: list[dict], summary: list[dict]) -> None:
        columns = ["setting", "prompt_index", "prompt", "seed", "image", *self.metrics, "generation_seconds"]
        self._write_csv("results.csv", columns, rows)
        self._write_csv("summary.csv", ["setting", "metric", "n", "mean", "ci_low", "ci_high"], summary)
        try:
            import pandas  # noqa: F401  (pyarrow writes through pandas)
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            import pandas as pd

            pd.DataFrame(rows, columns=columns).to_parquet(self.out / "results.parquet")
        page = render_report(f"headhunter eval — {self.model_name}", self.settings, rows, summary, self.metrics,
                             self.commands)
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
