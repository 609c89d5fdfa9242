"""Prompt sets for evaluation, with the categories the field's prompt sets carry.

Formats, chosen by the file's suffix:

- ``.txt``: one prompt per line;
- ``.csv``: a ``prompt`` column (DrawBench's ``Prompts`` too), optional ``category`` (``Category``), ``seed`` and
  ``style`` (a style makes the prompt ``"style, prompt"``);
- ``.tsv``: PartiPrompts' ``PartiPrompts.tsv`` (``Prompt``, ``Category``, ``Challenge``, ``Note``): its category is
  ``Category``; ``Challenge`` is kept with the row;
- ``.jsonl``: one object per line with ``prompt`` and the optional keys above; GenEval's
  ``evaluation_metadata.jsonl`` (``tag``, ``include``, ``prompt``) is categorised by ``tag``, and each row keeps its
  whole record, which a GenEval export writes back next to the images;
- ``.json``: a list of prompts, or HPSv2's benchmark prompts as ``hpsv2.benchmark_prompts("all")`` returns them
  (``{"anime": [...], "photo": [...], ...}``): the style is the category.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..textfiles import read_text

__all__ = ["ALL", "PromptRow", "read_prompts"]

ALL = "all"  # the category of the overall rows in summary.csv and the report
# Column names the field's files use, lower-cased: the first one present wins.
_PROMPT_KEYS = ("prompt", "prompts", "text")
_CATEGORY_KEYS = ("category", "tag")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None = None  # None: every seed of the run
    category: str | None = None
    # The row as its file had it (GenEval: tag, include, exclude, prompt), for benchmark exports.
    record: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)


def _records(path: Path, text: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        records = [dict(r) for r in reader]
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if records and not any(k in columns for k in _PROMPT_KEYS):
            raise ValueError(f"{path}: a {suffix} prompt file needs a 'prompt' column (PartiPrompts: 'Prompt', "
                             f"DrawBench: 'Prompts'; found: {', '.join(reader.fieldnames or [])})")
        return records
    if suffix == ".jsonl":
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON lines ({err})") from None
        if not all(isinstance(r, dict) for r in records):
            raise ValueError(f"{path}: every line of a .jsonl prompt file must be an object with a 'prompt'")
        return records
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        if isinstance(data, list) and all(isinstance(p, str) for p in data):
            return [{"prompt": p} for p in data]
        if isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                          for v in data.values()):
            return [{"prompt": p, "category": style} for style, prompts in data.items() for p in prompts]
        raise ValueError(f"{path}: a .json prompt file is a list of prompts or {{category: [prompts]}} (HPSv2's "
                         "benchmark prompts)")
    return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]


def _field(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    return next((lowered[k] for k in keys if lowered.get(k) not in (None, "")), None)


def read_prompts(path: str | Path) -> list[PromptRow]:
    """The rows of a prompt file (see the module's docstring for the formats), in file order."""
    path = Path(path)
    text = read_text(path, "prompt file")
    rows = []
    for i, record in enumerate(_records(path, text)):
        prompt = _field(record, _PROMPT_KEYS)
        if prompt is None or not str(prompt).strip():
            raise ValueError(f"{path}: row {i + 1} has no prompt (a 'prompt' column is required)")
        prompt = str(prompt).strip()
        style = _field(record, ("style",))
        if style:
            prompt = f"{str(style).strip()}, {prompt}"
        seed = _field(record, ("seed",))
        try:
            seed = None if seed is None else int(seed)
        except ValueError:
            raise ValueError(f"{path}: row {i + 1} has a non-integer seed {seed!r}") from None
        category = _field(record, _CATEGORY_KEYS)
        category = None if category is None else str(category).strip() or None
        if category == ALL:
            raise ValueError(f"{path}: row {i + 1}: the category {ALL!r} is reserved for the overall rows; rename it")
        rows.append(PromptRow(prompt, seed, category, dict(record)))
    if not rows:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts")
    return rows
