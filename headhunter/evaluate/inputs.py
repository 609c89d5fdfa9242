"""Prompt sets for evaluation: .txt (one prompt per line), .csv or .jsonl (a ``prompt`` column, optional ``seed`` and
``style``; a style makes the prompt ``"style, prompt"``)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..textfiles import read_text

__all__ = ["PromptRow", "read_prompts"]


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None = None  # None: every seed of the run


def read_prompts(path: str | Path) -> list[PromptRow]:
    path = Path(path)
    text = read_text(path, "prompt file")
    if path.suffix == ".csv":
        records = list(csv.DictReader(text.splitlines()))
        if records and "prompt" not in records[0]:
            raise ValueError(f"{path}: a .csv prompt file needs a 'prompt' column (found: {', '.join(records[0])})")
    elif path.suffix == ".jsonl":
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON lines ({err})") from None
        if not all(isinstance(r, dict) for r in records):
            raise ValueError(f"{path}: every line of a .jsonl prompt file must be an object with a 'prompt'")
    else:
        records = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    rows = []
    for i, record in enumerate(records):
        if "prompt" not in record or not str(record["prompt"]).strip():
            raise ValueError(f"{path}: row {i + 1} has no prompt (a 'prompt' column is required)")
        prompt = str(record["prompt"]).strip()
        if record.get("style"):
            prompt = f"{str(record['style']).strip()}, {prompt}"
        seed = record.get("seed")
        try:
            seed = None if seed in (None, "") else int(seed)
        except ValueError:
            raise ValueError(f"{path}: row {i + 1} has a non-integer seed {seed!r}") from None
        rows.append(PromptRow(prompt, seed))
    if not rows:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts")
    return rows
