"""Named guidance settings: ``"hh3: heads=runs/golden/selected.json, pag_scale=3, softness=0.5"``.

A setting is a name and pipeline arguments. ``key=value`` pairs are separated by commas that are followed by another
known ``key=``, so head specs keep their commas (``heads=L0H1,L1H2, pag_scale=3``). A numeric value with commas is a
sweep (``pag_scale=1,3,5`` gives three settings, named ``name[pag_scale=1]`` ...); alternatives for text values are
separated by ``|`` (``heads=L0H1|L1H2``).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..textfiles import read_text

__all__ = ["SETTING_KEYS", "Setting", "expand_settings", "load_settings_file", "parse_setting"]

# setting key -> (pipeline argument, type)
SETTING_KEYS: dict[str, tuple[str, type]] = {
    "heads": ("pag_heads", str),
    "pag_heads": ("pag_heads", str),
    "pag_scale": ("pag_scale", float),
    "softness": ("pag_softness", float),
    "pag_softness": ("pag_softness", float),
    "target": ("pag_target", str),
    "pag_target": ("pag_target", str),
    "scope": ("pag_scope", str),
    "pag_scope": ("pag_scope", str),
    "interval": ("pag_interval", str),
    "pag_interval": ("pag_interval", str),
    "adaptive_scale": ("pag_adaptive_scale", float),
    "pag_adaptive_scale": ("pag_adaptive_scale", float),
    "reuse": ("pag_reuse", int),
    "pag_reuse": ("pag_reuse", int),
    "mode": ("pag_mode", str),
    "pag_mode": ("pag_mode", str),
    "applied_layers": ("pag_applied_layers", str),
    "pag_applied_layers": ("pag_applied_layers", str),
    "guidance_scale": ("guidance_scale", float),
    "cfg": ("guidance_scale", float),
    "true_cfg_scale": ("true_cfg_scale", float),
    "negative_prompt": ("negative_prompt", str),
    "steps": ("num_inference_steps", int),
    "num_inference_steps": ("num_inference_steps", int),
    "width": ("width", int),
    "height": ("height", int),
    "frames": ("num_frames", int),
    "num_frames": ("num_frames", int),
}


@dataclass(frozen=True)
class Setting:
    """A named set of pipeline arguments (``kwargs`` use the pipeline's argument names)."""

    name: str
    kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items()) or "no guidance"


def _convert(key: str, value: Any) -> Any:
    argument, kind = SETTING_KEYS[key]
    if argument == "pag_interval":
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        start, sep, end = str(value).partition(":")
        if not sep:
            raise ValueError(f"interval {value!r} must be START:END, e.g. 0:0.5")
        return float(start), float(end)
    if argument == "pag_applied_layers":
        return [int(v) if str(v).strip().isdigit() else str(v).strip() for v in str(value).split(";")]
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"setting value {key}={value!r} is not a whole number")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting value {key}={value!r} is not a {kind.__name__}") from None


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", name):
        raise ValueError(f"setting name {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    return name


def parse_setting(text: str) -> list[Setting]:
    """Parse one ``--setting`` text into one setting, or several for a sweep."""
    name, sep, body = text.partition(":")
    if not sep:
        raise ValueError(f"setting {text!r} must be NAME: key=value, ... (e.g. 'base:' for no guidance)")
    name = _check_name(name.strip())
    keys = "|".join(sorted((re.escape(k) for k in SETTING_KEYS), key=len, reverse=True))
    parts = [p.strip() for p in re.split(rf",\s*(?=(?:{keys})\s*=)", body.strip()) if p.strip()]
    raw: dict[str, list[Any]] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"setting {name!r}: {part!r} is not key=value")
        if key not in SETTING_KEYS:
            raise ValueError(f"setting {name!r}: unknown key {key!r}; known keys: {', '.join(sorted(SETTING_KEYS))}")
        argument, kind = SETTING_KEYS[key]
        value = value.strip()
        if kind in (float, int) and "," in value:
            raw[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif kind is str and "|" in value:
            raw[key] = [v.strip() for v in value.split("|")]
        else:
            raw[key] = [value]
    return expand_settings(name, raw)


def expand_settings(name: str, values: dict[str, list[Any]]) -> list[Setting]:
    """One setting per combination of swept values."""
    keys = list(values)
    swept = [k for k in keys if len(values[k]) > 1]
    settings = []
    for combo in itertools.product(*(values[k] for k in keys)):
        kwargs = {SETTING_KEYS[k][0]: _convert(k, v) for k, v in zip(keys, combo)}
        label = name
        if swept:
            label += "[" + ",".join(f"{k}={v}" for k, v in zip(keys, combo) if k in swept) + "]"
        settings.append(Setting(label, kwargs))
    return settings


def load_settings_file(path: str | Path) -> list[Setting]:
    """Settings from TOML or JSON: ``{name: {key: value or [values to sweep]}}`` (optionally under ``settings``)."""
    path = Path(path)
    text = read_text(path, "settings file")
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"settings file {str(path)!r} is not valid TOML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"settings file {str(path)!r} is not valid JSON: {err}") from None
    shape = f"settings file {str(path)!r} must map setting names to tables of key = value, e.g. {{\"hh\": {{\"heads\": \"L1H10\"}}}}"
    if not isinstance(data, dict):
        raise ValueError(shape)
    data = data.get("settings", data)
    if not isinstance(data, dict) or not data or not all(isinstance(table, dict) for table in data.values()):
        raise ValueError(shape)
    settings = []
    for name, table in data.items():
        _check_name(name)
        unknown = [k for k in table if k not in SETTING_KEYS]
        if unknown:
            raise ValueError(f"setting {name!r} in {path}: unknown key(s) {unknown}")
        settings += expand_settings(name, {k: v if isinstance(v, list) and k not in ("interval", "pag_interval")
                                           else [v] for k, v in table.items()})
    return settings
