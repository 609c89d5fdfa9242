"""An evaluation's images in a benchmark's own layout, so that its evaluator runs on them unchanged.

One folder per setting (``DIR/<setting>``), each holding that setting's images as the benchmark expects them:

- ``geneval`` (GenEval's ``evaluation/evaluate_images.py DIR/<setting>``): ``<index:05d>/metadata.jsonl``, the
  prompt's line of ``evaluation_metadata.jsonl`` (its evaluator reads it with ``json.load``), and
  ``<index:05d>/samples/<seed:04d>.png``, where ``index`` is the prompt's line in that file;
- ``t2i-compbench`` (``BLIPvqa_eval/BLIP_vqa.py --out_dir=DIR/<setting>/`` and its siblings):
  ``samples/<prompt>_<n:06d>.png``, ``n`` counting the folder's images; the evaluators read the prompt back from the
  name up to its first ``_``. With categories, one such folder per category (``DIR/<setting>/<category>/samples``),
  since each category is evaluated on its own;
- ``hpsv2`` (``hpsv2.evaluate(DIR/<setting>)``): ``<style>/<i:05d>.jpg``, ``i`` the prompt's place among its
  style's prompts, one image each; with several seeds one folder per seed (``DIR/<setting>-s<seed>``).

A target folder is refused unless it is empty or holds an earlier export of this kind (``headhunter-benchmark.json``
lists its files); those files are removed first, so no image from an earlier run is ever read as this run's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from .inputs import PromptRow

__all__ = ["BENCHMARKS", "HPSV2_STYLES", "MARKER", "check_benchmark", "export_benchmark"]

BENCHMARKS = ("geneval", "t2i-compbench", "hpsv2")
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
MARKER = "headhunter-benchmark.json"
_NAME_LIMIT = 255  # bytes in a file name on common file systems


def check_benchmark(kind: str, prompts: Sequence[PromptRow], target: str | Path) -> None:
    """ValueError, before any image is made, when ``prompts`` cannot be written in ``kind``'s layout or ``target``
    holds files that are not an earlier export."""
    if kind not in BENCHMARKS:
        raise ValueError(f"--export: unknown benchmark {kind!r}; choose one of {', '.join(BENCHMARKS)}")
    for i, row in enumerate(prompts, start=1):
        if kind == "geneval":
            record = row.record or {}
            if not {"tag", "include", "prompt"} <= set(record):
                raise ValueError(f"--export geneval: prompt {i} has no GenEval metadata (tag, include); GenEval's "
                                 "evaluator reads them, so --prompts must be its evaluation_metadata.jsonl")
        elif kind == "t2i-compbench":
            category = row.category
            if category is not None and (category in (".", "..") or any(c in category for c in "/\\\0")):
                raise ValueError(f"--export t2i-compbench: prompt {i}'s category {category!r} cannot be a folder name")
            bad = next((c for c in ("_", "/", "\\", "\0") if c in row.prompt), None)
            if bad is not None:
                raise ValueError(f"--export t2i-compbench: prompt {i} ({row.prompt!r}) holds {bad!r}; T2I-CompBench "
                                 "reads the prompt back from the file name up to its first '_'")
            if len(f"{row.prompt}_000000.png".encode()) > _NAME_LIMIT:
                raise ValueError(f"--export t2i-compbench: prompt {i} is too long to be a file name")
        elif row.category not in HPSV2_STYLES:
            raise ValueError(f"--export hpsv2: prompt {i} has style {row.category!r}; HPSv2 scores images against its "
                             f"own prompts per style ({', '.join(HPSV2_STYLES)}), so --prompts must be its benchmark "
                             "prompts as JSON ({style: [prompts]})")
    _earlier_files(kind, Path(target))


def _earlier_files(kind: str, target: Path) -> list[Path]:
    """The files of an earlier export of ``kind`` into ``target``; ValueError if anything else is there."""
    if not target.exists():
        return []
    if not target.is_dir():
        raise ValueError(f"--export: {str(target)!r} is a file; name a folder")
    marker = target / MARKER
    if not marker.is_file():
        if any(target.iterdir()):
            raise ValueError(f"--export: {str(target)!r} is not empty and holds no earlier {kind} export; name a new "
                             "or empty folder")
        return []
    try:
        earlier = json.loads(marker.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise ValueError(f"--export: {marker} is unreadable ({err})") from None
    if earlier.get("benchmark") != kind:
        raise ValueError(f"--export: {str(target)!r} holds a {earlier.get('benchmark')} export, not {kind}; name "
                         "another folder")
    files = [target / name for name in earlier.get("files", [])]
    outside = [f for f in files if not f.resolve().is_relative_to(target.resolve())]
    if outside:
        raise ValueError(f"--export: {marker} lists files outside the folder ({outside[0]}); refusing to remove them")
    return files


def _layout(kind: str, rows: Sequence[dict], prompts: Sequence[PromptRow], folder_of: Any) -> dict[str, Any]:
    """{relative path: (source image, None) or (None, text)} for every file of the export."""
    seeds = sorted({r["seed"] for r in rows})
    files: dict[str, Any] = {}
    counters: dict[str, int] = {}
    place, seen = {}, {}  # hpsv2: a prompt's place among its style's prompts
    for index, row in enumerate(prompts):
        place[index] = seen.get(row.category, 0)
        seen[row.category] = place[index] + 1
    for r in sorted(rows, key=lambda r: (r["setting"], r["prompt_index"], r["seed"])):
        setting, index, seed = folder_of(r["setting"]), r["prompt_index"], r["seed"]
        if kind == "geneval":
            files[f"{setting}/{index:05d}/metadata.jsonl"] = (None, json.dumps(prompts[index].record) + "\n")
            files[f"{setting}/{index:05d}/samples/{seed:04d}.png"] = (r["image"], None)
        elif kind == "t2i-compbench":
            category = prompts[index].category
            samples = f"{setting}/{category}/samples" if category else f"{setting}/samples"
            n = counters.get(samples, 0)
            counters[samples] = n + 1
            files[f"{samples}/{prompts[index].prompt}_{n:06d}.png"] = (r["image"], None)
        else:
            model = setting if len(seeds) == 1 else f"{setting}-s{seed}"
            files[f"{model}/{prompts[index].category}/{place[index]:05d}.jpg"] = (r["image"], None)
    return files


def export_benchmark(kind: str, rows: Sequence[dict], prompts: Sequence[PromptRow], run_dir: str | Path,
                     target: str | Path, command: str = "") -> list[Path]:
    """Write the images of ``rows`` (an evaluation's result rows; ``image`` relative to ``run_dir``) into ``target``
    in ``kind``'s layout (see the module's docstring). Returns the files written."""
    from PIL import Image

    from .runner import _slug

    check_benchmark(kind, prompts, target)
    if any("video" in r for r in rows):
        raise ValueError(f"--export {kind}: these benchmarks score images, and this run made videos")
    target, run_dir = Path(target), Path(run_dir)
    for path in _earlier_files(kind, target):
        path.unlink(missing_ok=True)
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    files = _layout(kind, rows, prompts, _slug)
    written = []
    for relative, (source, text) in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            path.write_text(text, encoding="utf-8")
        elif path.suffix == ".jpg":
            with Image.open(run_dir / source) as image:
                image.convert("RGB").save(path, quality=95)
        else:
            shutil.copyfile(run_dir / source, path)
        written.append(path)
    marker = {"benchmark": kind, "run": str(run_dir.resolve()), "command": command, "files": sorted(files)}
    (target / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return written
