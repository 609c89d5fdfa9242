"""Finding a neural scorer's weights: a local path, the Hugging Face cache, or the hub. When none works, raise
:class:`ScorerUnavailable` naming the files and how to fetch them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import ScorerUnavailable

__all__ = ["load_checkpoint", "load_pretrained", "resolve_file"]


def _unavailable(scorer: str, what: str, source: str, err: Exception) -> ScorerUnavailable:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
    repo = source.split("::")[0]
    return ScorerUnavailable(
        f"scorer {scorer!r} needs {what} from {source}, which is neither cached nor reachable{offline}. "
        f"Fetch it where the hub is reachable (`hf download {repo}`), then run with the cache present, or pass a "
        f"local copy (the scorer's model id / path option). [{type(err).__name__}]"
    )


def resolve_file(source: str | os.PathLike, filename: str, *, scorer: str, local_files_only: bool = False) -> Path:
    """``source`` may be a file, a folder holding ``filename``, or a hub repo id."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise ScorerUnavailable(f"scorer {scorer!r}: {path} has no {filename}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), filename, local_files_only=local_files_only))
    except Exception as err:  # hub errors come in many classes; all mean "not available here"
        raise _unavailable(scorer, filename, f"{source}::{filename}", err) from err


def load_pretrained(cls: Any, source: str, *, scorer: str, local_files_only: bool = False, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` with a :class:`ScorerUnavailable` when the files cannot be had."""
    try:
        return cls.from_pretrained(source, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            raise
        raise _unavailable(scorer, f"{cls.__name__} files", str(source), err) from err


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth/.bin (``weights_only=True``) or .safetensors file; unwraps ``state_dict`` /
    ``model`` wrappers and a ``module.`` prefix (DataParallel)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
