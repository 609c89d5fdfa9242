"""What every command shares: the one-line usage error, argument types, output-folder checks, prompt lists and the
model-dependent checks that run after a model loads but before any image is generated."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = ["MODEL_HELP", "UsageError", "check_writable_dir", "import_modules", "non_negative_float", "parse_interval",
           "parse_option", "parse_seeds", "parse_size", "positive_int", "read_prompt_list", "run_target", "unique_path"]


MODEL_HELP = ("hub id, local pipeline folder, or a built-in offline model: toy-shapes, toy-scenes (trained), tiny-sd3, tiny-sd3.5, "
              "tiny-flux, tiny-chroma, tiny-flux2, tiny-qwenimage, tiny-zimage, tiny-wan (random weights)")


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def parse_size(text: str) -> tuple[int, int]:
    from headhunter.arguments import MAX_IMAGE_SIDE

    try:
        if "x" in text.lower():
            width, height = (int(x) for x in text.lower().split("x"))
        else:
            width = height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or WxH, e.g. 1024 or 768x1024") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"size {text!r} is too large (at most {MAX_IMAGE_SIDE} pixels a side)")
    return width, height


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds {text!r} must be integers joined by commas, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    if any(s < 0 or s >= 2**63 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds {text!r} must be between 0 and 2**63 - 1")
    return list(dict.fromkeys(seeds))  # a repeated seed would only repeat an image


def parse_interval(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"interval {text!r} must be START,END fractions, e.g. 0,0.5") from None
    return start, end


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"option {text!r} must be KEY=VALUE, e.g. local_files_only=true")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), float(value) if "." in value else int(value)
    except ValueError:
        return key.strip(), value


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any work when ``path`` cannot hold our outputs: it is a file, or neither it nor the folder it
    would be created in accepts a new file. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file; name a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {str(path)!r} is not writable ({err.strerror or err})") from None
    return path


def unique_path(path: Path) -> Path:
    """``path``, or ``stem-2.png``, ``stem-3.png``... when a file of that name exists: never overwrite an image. The
    name is reserved (created empty) so that a concurrent run picks another one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 2
    while True:
        try:
            with open(candidate, "x"):
                return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
            n += 1


def read_prompt_list(prompts: Sequence[str] | None, prompt_file: str | None, style: str | None) -> list[str]:
    """``--prompt`` values plus the lines of ``--prompt-file``; with ``--style``, "style, prompt" each."""
    from headhunter.textfiles import read_text

    found = [p for p in (prompts or []) if p.strip()]
    if prompt_file:
        found += [line.strip() for line in read_text(prompt_file, "prompt file").splitlines() if line.strip()]
    if not found:
        raise UsageError("give at least one --prompt or a --prompt-file with one prompt per line")
    if style:
        from headhunter.search import style_prompts

        found = style_prompts(style, found)
    return found


def run_target(args: argparse.Namespace) -> tuple[str, str, Any, int | None, int | None]:
    """(device, model family, built-in model's defaults or None, width, height) for search and eval, checked before
    any weight loads; under accelerate / torchrun each process takes its own device."""
    from headhunter.pipelines import model_family
    from headhunter.pipelines.loading import builtin_defaults, check_device

    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        device = str(PartialState().device)
    device = check_device(device)
    family = model_family(args.model)
    builtin = builtin_defaults(args.model)
    width, height = args.size or default_size(builtin, family)
    return device, family, builtin, width, height


def default_size(builtin: Any, family: str) -> tuple[int, int]:
    """(width, height) when --size is not given: the built-in model's, else the family's usual resolution."""
    if builtin is not None:
        return builtin.size, builtin.size
    return (1024, 1024) if family == "sd3" else (512, 512)


def import_modules(modules: Sequence[str]) -> None:
    """``--import MODULE``: user modules that register their own objectives."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UsageError(f"cannot import {module!r} for --import: {err}") from None
