"""Generation settings carried in PNG metadata, so every image on disk says how to make it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, PngImagePlugin

from .parameters import a1111_parameters, parse_a1111, parse_comfyui

__all__ = ["METADATA_KEY", "frame_paths", "read_png_settings", "read_settings", "save_png", "save_video", "settings_of",
           "with_settings"]

METADATA_KEY = "headhunter"


def _text_chunks(settings: dict[str, Any]) -> dict[str, str]:
    """The PNG text chunks of ``settings``: all of them as JSON under ``headhunter``, and A1111's ``parameters``
    text (prompt, ``Negative prompt:``, ``Steps: …, CFG scale: …``) that A1111's PNG Info, Civitai and ComfyUI read."""
    return {METADATA_KEY: json.dumps(settings, sort_keys=True), "parameters": a1111_parameters(settings)}


def with_settings(image: Image.Image, settings: dict[str, Any]) -> Image.Image:
    """``image`` carrying ``settings`` in its ``info``, so whatever writes it as PNG with its text metadata (Gradio
    does, for the images a page shows) writes them too. Returns ``image``."""
    image.info.update(_text_chunks(settings))
    return image


def save_png(image: Image.Image, path: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``image`` as PNG with ``settings`` as JSON in the ``headhunter`` text chunk (plus A1111's
    ``parameters`` text)."""
    info = PngImagePlugin.PngInfo()
    for key, text in _text_chunks(settings).items():
        info.add_text(key, text)
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


def read_png_settings(path: str | Path) -> tuple[dict[str, Any], str]:
    """The settings a PNG carries and who wrote them: ``(settings, "headhunter")`` with every headhunter key, or the
    fields other tools share (:data:`~headhunter.parameters.SHARED_FIELDS`) with ``"A1111"`` or ``"ComfyUI"``.
    ValueError when it carries none of these."""
    with Image.open(path) as image:
        chunks = dict(getattr(image, "text", {}) or {})
    if METADATA_KEY in chunks:
        return json.loads(chunks[METADATA_KEY]), "headhunter"
    if "parameters" in chunks:
        return parse_a1111(chunks["parameters"]), "A1111"
    if "prompt" in chunks:
        return parse_comfyui(chunks["prompt"]), "ComfyUI"
    raise ValueError("it carries no settings (neither headhunter's, A1111's parameters nor a ComfyUI graph)")


def settings_of(image: Image.Image) -> dict[str, Any]:
    """The settings an image in memory carries (:func:`with_settings`, or read from a headhunter PNG); {} if none."""
    text = image.info.get(METADATA_KEY)
    return json.loads(text) if isinstance(text, str) else {}


def save_video(frames: Sequence[Image.Image], path: str | Path, settings: dict[str, Any], fps: int = 16) -> Path:
    """A short video as files: every frame a PNG with ``settings`` in the folder named like ``path`` without its
    suffix (``clip/frame-000.png``, ...), an animated WebP (``clip.webp``, lossless, ``fps`` frames a second) and the
    first frame as ``path`` (``clip.png``) — written last, so a ``path`` on disk means the whole set is. Returns
    ``path``."""
    path = Path(path)
    folder = path.with_suffix("")
    for index, frame in enumerate(frames):
        save_png(frame, folder / f"frame-{index:03d}.png", {**settings, "frame": index})
    tmp = path.with_suffix(".webp.tmp")
    frames[0].save(tmp, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps),
                   loop=0, lossless=True)
    tmp.replace(path.with_suffix(".webp"))
    return save_png(frames[0], path, settings)


def frame_paths(path: str | Path) -> list[Path]:
    """The frame PNGs :func:`save_video` wrote for ``path``, in order (empty for a still image)."""
    return sorted(Path(path).with_suffix("").glob("frame-*.png"))
