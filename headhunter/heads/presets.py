"""Head preset files (``headhunter.heads/1``): the ones shipped in ``headhunter/presets/`` and a search's
``selected.json``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .authors import AUTHORS_SUFFIXES, read_authors_heads
from .headset import HeadSet, HeadSetLike, _check_softness

if TYPE_CHECKING:
    from .layout import HeadLayout

__all__ = ["PRESET_FORMAT", "list_presets", "load_preset", "preset_family", "preset_from_json", "save_preset"]

PRESET_FORMAT = "headhunter.heads/1"


def preset_family(model: str, layout: "HeadLayout") -> str:
    """The preset family of a model: its layout's type (``"sd3"``, ``"flux"``), prefixed ``tiny-`` for the tiny
    offline models (their few heads are not the real models'); a toy model's name (``"toy-shapes"``) for the trained
    toy models, whose heads are their own."""
    from ..testbed import TOY_MODELS

    name = str(model).lower()
    if name in TOY_MODELS:
        return name
    return ("tiny-" if name.startswith("tiny-") else "") + layout.model_type


def list_presets(family: str | None = None) -> dict[str, dict]:
    """Presets shipped in ``headhunter/presets``: ``{name: preset}`` (see :func:`load_preset`); with ``family``
    (``"sd3"``, ``"flux"``, ``"tiny-sd3"``, ``"tiny-flux"``) only the presets made for that model family."""
    folder = resources.files("headhunter") / "presets"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            preset = preset_from_json(json.loads(entry.read_text()), entry.name)
            if family is None or preset.get("family") == family:
                found[entry.name[: -len(".json")]] = preset
    return found


def load_preset(name_or_path: str | Path) -> dict:
    """Load a preset by shipped name (``"sd3-shadow"``), from a JSON file (e.g. a search's ``selected.json``), from
    an exported folder (``headhunter export``; ``hf://user/repo`` for one on the Hub) or from the HeadHunter reference
    implementation's ``final_perturb_heads.txt`` / ``.pkl`` (see :mod:`.authors`; a pickle is read only if it holds
    nothing but lists, tuples and integers).

    Returns the preset's fields with ``"heads"`` as a :class:`HeadSet`.
    """
    from ..sharing import is_export, load_export  # an export folder (or hf://user/repo) is a preset too

    if is_export(name_or_path):
        return load_export(name_or_path)
    path = Path(name_or_path)
    if path.suffix.lower() in (*AUTHORS_SUFFIXES, ".txt"):
        return {"format": PRESET_FORMAT, "heads": read_authors_heads(path), "source": str(path),
                "description": "selected heads from the HeadHunter reference implementation"}
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"preset file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"preset file {str(path)!r} is not valid JSON: {err}") from None
        return preset_from_json(data, str(path))
    shipped = list_presets()
    if str(name_or_path) not in shipped:
        names = ", ".join(shipped)
        raise ValueError(
            f"{str(name_or_path)!r} is neither a head spec (like L13H17), a shipped preset ({names}) nor a JSON file"
        )
    return shipped[str(name_or_path)]


def preset_from_json(data: Any, where: str) -> dict:
    """A preset's fields from its decoded JSON (``heads`` as a :class:`HeadSet`); ValueError naming ``where`` when it
    is not one. For preset data that did not come from a path, such as an upload."""
    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT or "heads" not in data:
        raise ValueError(f"{where} is not a head preset: expected a JSON object with format {PRESET_FORMAT!r} and heads")
    preset = dict(data)
    preset["heads"] = HeadSet.parse(data["heads"]) if isinstance(data["heads"], str) else HeadSet.coerce(data["heads"])
    if "pag_softness" in preset:
        _check_softness(preset["pag_softness"], f"{where}: pag_softness")
    return preset


def save_preset(
    path: str | Path,
    heads: HeadSetLike,
    *,
    model: str | None = None,
    family: str | None = None,
    pag_scale: float | None = None,
    pag_softness: float | None = None,
    description: str = "",
    source: str = "",
) -> Path:
    """Write a preset file in the ``headhunter.heads/1`` format. ``family`` (``"sd3"``, ``"flux"``, ...) says which
    models it is for: the studio offers a preset only to its family."""
    data: dict[str, Any] = {"format": PRESET_FORMAT, "model": model}
    if family is not None:
        data["family"] = family
    data["heads"] = str(HeadSet.coerce(heads))
    if pag_scale is not None:
        data["pag_scale"] = float(pag_scale)
    if pag_softness is not None:
        data["pag_softness"] = _check_softness(pag_softness, "pag_softness")
    data["description"] = description
    data["source"] = source
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
