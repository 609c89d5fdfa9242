"""The studio's workspace folder: saved presets and search runs, addressed by *name* only.

    <workspace>/presets/<name>.json    presets saved or imported in the studio  ("saved:<name>" in the page)
    <workspace>/<name>/                search runs (config.json, scores, selected.json ...)  ("run:<name>")

Names are letters, digits, ``-`` and ``_`` (at most 64): whatever is typed in the page is checked against that
pattern or looked up in a listing, so nothing outside the workspace is ever read or written.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headhunter.heads import HeadLayout, HeadSet, load_preset, save_preset
from headhunter.search import SearchConfig
from headhunter.search.heatmap import heatmap_image
from headhunter.search.store import RunStore

__all__ = ["RunInfo", "Workspace", "check_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RUN_PREFIX, SAVED_PREFIX = "run:", "saved:"


def check_name(text: str, what: str) -> str:
    """``text`` stripped, when it is a usable name; ValueError otherwise (a path or traversal included)."""
    name = (text or "").strip()
    if not _NAME.match(name):
        raise ValueError(f"{what}: use letters, digits, '-' and '_' only (at most 64, no paths), got {name!r}")
    return name


@dataclass
class RunInfo:
    name: str
    status: str
    objective: str
    heads: str
    images: int
    total: int


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- presets -----------------------------------------------------------------------------------------------------
    def presets(self) -> dict[str, Path]:
        """``{"saved:<name>": file, "run:<run>": selected.json}`` for everything in the workspace."""
        found: dict[str, Path] = {}
        folder = self.root / "presets"
        if folder.is_dir():
            found.update({f"{SAVED_PREFIX}{p.stem}": p for p in sorted(folder.glob("*.json")) if _NAME.match(p.stem)})
        if self.root.is_dir():
            found.update({f"{RUN_PREFIX}{p.parent.name}": p for p in sorted(self.root.glob("*/selected.json"))
                          if p.parent.name != "presets"})
        return found

    def save_preset(self, name: str, heads: HeadSet, *, model: str, family: str, pag_scale: float, softness: float,
                    description: str = "", source: str = "headhunter studio") -> str:
        """Save ``heads`` as ``saved:<name>`` (replacing a preset of that name); returns the menu name."""
        name = check_name(name, "Preset name")
        folder = self.root / "presets"
        folder.mkdir(parents=True, exist_ok=True)
        save_preset(folder / f"{name}.json", heads, model=model, family=family, pag_scale=pag_scale,
                    pag_softness=softness, description=description.strip(), source=source)
        return f"{SAVED_PREFIX}{name}"

    def load_preset(self, menu_name: str) -> dict | None:
        """The preset behind a workspace menu name, or None when there is none of that name."""
        path = self.presets().get(menu_name)
        return None if path is None else load_preset(path)

    # --- search runs ---------------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        return self.root / check_name(name, "Run name")

    def runs(self, running: set[str] = frozenset()) -> list[RunInfo]:
        """Every search run in the workspace, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for config_path in sorted(self.root.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            run = config_path.parent
            if not _NAME.match(run.name):
                continue
            try:
                config = read_config(run)
            except ValueError:
                continue
            done = (run / "summary.json").is_file()
            status = "running" if run.name in running else "done" if done else "stopped — resumable"
            heads = selected_so_far(run, config)
            found.append(RunInfo(run.name, status, config.objective, str(heads) or "—", scored(run),
                                 config_images(config) if config.strategy != "halving" else 0))
        return found


def read_config(run_dir: Path) -> SearchConfig:
    try:
        return SearchConfig.from_json(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run_dir.name} is not a headhunter search run ({err})") from None


def search_arguments(config: SearchConfig) -> dict[str, Any]:
    """The :class:`~headhunter.search.HeadHunter` arguments that rebuild ``config`` (to resume its run)."""
    if config.objective.startswith("callable:"):
        raise ValueError("its objective was a Python callable; resume it from Python")
    try:
        extra = {key: ast.literal_eval(value) for key, value in config.extra.items()}
    except (ValueError, SyntaxError):
        raise ValueError("its extra pipeline arguments cannot be read back; resume it from Python") from None
    return dict(objective=config.objective, prompts=list(config.pairs), seeds=None, top_k=config.top_k,
                rounds=config.rounds, candidates=list(config.candidates), pag_scale=config.pag_scale,
                pag_softness=config.pag_softness, pag_target=config.pag_target, pag_scope=config.pag_scope,
                num_inference_steps=config.num_inference_steps, height=config.height, width=config.width,
                guidance_scale=config.guidance_scale, strategy=config.strategy,
                halving_initial_pairs=config.halving_initial_pairs, halving_keep=config.halving_keep,
                coarse_steps=config.coarse_steps,
                model_name=config.model, extra_call_kwargs=extra or None)


def greedy_images(candidates: int, pairs: int, top_k: int, rounds: int) -> int:
    """Images a greedy search generates: every remaining candidate on every pair, each round."""
    return sum((candidates - r * top_k) * pairs for r in range(rounds))


def config_images(config: SearchConfig) -> int:
    """The images of a greedy run of ``config``."""
    return greedy_images(len(config.candidates), len(config.pairs), config.top_k, config.rounds)


def scored(run_dir: Path) -> int:
    return sum(1 for path in run_dir.glob("scores*.jsonl") for line in path.read_text().splitlines() if line.strip())


def selected_so_far(run_dir: Path, config: SearchConfig) -> HeadSet:
    """The heads chosen by the rounds finished so far (the ranking files of finished rounds, in order)."""
    chosen = []
    for r in range(config.rounds):
        path = run_dir / "rankings" / f"round-{r}.csv"
        if not path.is_file():
            break
        rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line.strip()]
        full = [row[1] for row in rows if int(row[3]) == len(config.pairs)]
        chosen += full[: config.top_k]
    return HeadSet.parse(",".join(chosen))


def live_round(run_dir: Path, config: SearchConfig) -> tuple[int, dict[tuple[int, int], float], dict[tuple[int, int], int]]:
    """Images scored so far, and for the latest round with scores each head's mean over the pairs scored so far and
    their counts (one read of the logs)."""
    records = RunStore(run_dir, config).load()
    if not records:
        return 0, {}, {}
    current = max(key[0] for key in records)
    sums: dict[tuple[int, int], list[float]] = {}
    for (r, layer, head, _), record in records.items():
        if r == current:
            score = record.get("score")
            sums.setdefault((layer, head), []).append(float("nan") if score is None else float(score))
    return len(records), {h: sum(v) / len(v) for h, v in sums.items()}, {h: len(v) for h, v in sums.items()}


def ranking_rows(means: dict[tuple[int, int], float], counts: dict[tuple[int, int], int]) -> list[list]:
    """``[head, score, pairs]`` rows, best first (failed heads last)."""
    order = sorted(means, key=lambda h: (0, -means[h]) if math.isfinite(means[h]) else (1, 0.0))
    return [[f"L{l}H{h}", round(means[(l, h)], 4) if math.isfinite(means[(l, h)]) else "failed", counts[(l, h)]]
            for l, h in order]


def live_heatmap(layout: HeadLayout, means: dict, selected: HeadSet) -> Any:
    cell = max(12, min(32, 480 // layout.num_heads))  # small models get cells large enough to see
    return heatmap_image(means, layout.num_layers, layout.num_heads, {(h.layer, h.head) for h in selected}, cell=cell)
