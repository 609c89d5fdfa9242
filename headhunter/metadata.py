"""Generation settings carried in PNG metadata, so every image on disk says how to make it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

__all__ = ["METADATA_KEY", "read_settings", "save_png"]

METADATA_KEY = "headhunter"


def save_png(image: Image.Image, path: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``image`` as PNG with ``settings`` as JSON in the ``headhunter`` text chunk (plus a human-readable
    ``parameters`` line that common image viewers show)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(settings, sort_keys=True))
    info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in settings.items()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)  # never leave a half-written PNG behind
    return path


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings :func:`save_png` stored in ``path``."""
    with Image.open(path) as image:
        text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    if text is None:
        raise ValueError(f"{path} carries no headhunter settings")
    return json.loads(text)
