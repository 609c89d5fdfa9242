"""The run directory: the unit of work of a search.

    config.json            the SearchConfig (a different config in the same directory is refused)
    scores*.jsonl          every evaluated score, append-only, one JSON object per line (one file per process)
    rankings/round-N.csv   per-round rankings
    heatmaps/round-N.png   per-round mean scores, layers × heads
    selected.json          the selected heads in selection order, as a head preset
    summary.json           the result and the work it took
    images/                generated images, when asked for

A process killed at any moment loses at most the batch it was computing: scores are appended and flushed per batch,
and a torn last line is dropped on the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Iterable

from ..jsonlog import append_records, read_records, repair_log
from .config import SearchConfig

__all__ = ["RunStore", "ScoreKey"]

ScoreKey = tuple  # (round, layer, head, pair)

logger = logging.getLogger("headhunter")


class RunStore:
    def __init__(self, run_dir: str | os.PathLike, config: SearchConfig, rank: int = 0, world: int = 1):
        self.dir = Path(run_dir)
        self.config = config
        self.rank = rank
        self.log_path = self.dir / ("scores.jsonl" if world == 1 else f"scores.rank{rank}-of-{world}.jsonl")

    # config -------------------------------------------------------------------------------------------------------
    def write_config(self) -> bool:
        """Create the directory and its config.json (rank 0, before the others check it). True when this call
        created the run (so :meth:`discard_if_empty` may remove it again)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"run directory {str(self.dir)!r} is a file; name a folder")
        created_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "config.json"
        if path.exists():
            return False
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        tmp.replace(path)
        self._created = "dir" if created_dir else "config"
        return True

    def check_config(self) -> None:
        path = self.dir / "config.json"
        try:
            existing = SearchConfig.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a headhunter search config ({err}); use a new --run-dir") from None
        if existing != self.config:
            changed = ", ".join(existing.differences(self.config)) or "settings"
            raise ValueError(
                f"run directory {self.dir} holds a different search (changed: {changed}); "
                "use a new --run-dir, or the same settings to resume"
            )
        changes = existing.environment_changes(self.config)
        if changes:
            logger.warning("resuming %s in another environment (%s); scores may differ slightly from the earlier "
                           "ones", self.dir, "; ".join(changes))

    def discard_if_empty(self) -> None:
        """Remove what :meth:`write_config` created when no score was logged, so a run that failed before its first
        image leaves nothing behind (and the corrected command is not refused as a different search)."""
        created = getattr(self, "_created", None)
        if created is None or any(self.dir.glob("scores*.jsonl")):
            return
        if created == "dir":
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            (self.dir / "config.json").unlink(missing_ok=True)
        self._created = None

    # scores -------------------------------------------------------------------------------------------------------
    def repair(self) -> None:
        repair_log(self.log_path)

    def append(self, records: Iterable[dict]) -> None:
        append_records(self.log_path, (_clean(r) for r in records))

    def load(self) -> dict[ScoreKey, dict]:
        """Every score logged by any process, keyed by (round, layer, head, pair); the first record of a key wins."""
        records: dict[ScoreKey, dict] = {}
        for record in read_records(sorted(self.dir.glob("scores*.jsonl"))):
            key = (record["round"], record["head"][0], record["head"][1], record["pair"])
            records.setdefault(key, record)
        return records

    # outputs ------------------------------------------------------------------------------------------------------
    def write_text(self, relative: str, text: str) -> Path:
        path = self.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path


def _clean(record: dict) -> dict:
    score = record.get("score")
    if score is not None and not math.isfinite(score):
        record = {**record, "score": None}  # JSON has no NaN; None reads back as "failed"
    return record
