"""The ``parameters`` text other tools read: written in AUTOMATIC1111's layout for headhunter's settings, and read
back (the fields the tools share) from A1111, Forge, Civitai and ComfyUI PNGs.

A1111's layout is the prompt, a ``Negative prompt:`` line, then one line of ``Key: value`` pairs joined by ``", "``;
a value holding a comma, a colon or a newline is written as a JSON string. ComfyUI stores its API graph as JSON in
the ``prompt`` chunk: the sampler node has the seed, steps and CFG, its conditioning links lead to the prompt texts
and its latent to the size.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["SHARED_FIELDS", "a1111_parameters", "parse_a1111", "parse_comfyui"]

#: what the readers return: the fields every tool writes, in headhunter's names
SHARED_FIELDS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "width", "height", "cfg_scale",
                 "distilled_cfg_scale")

# headhunter's keys written after A1111's own, under the label A1111 shows
_HEAD_FIELDS = (("pag_heads", "PAG heads"), ("pag_scale", "PAG scale"), ("pag_softness", "PAG softness"),
                ("pag_target", "PAG target"), ("pag_scope", "PAG scope"), ("pag_interval", "PAG interval"),
                ("pag_adaptive_scale", "PAG adaptive scale"), ("pag_reuse", "PAG reuse"), ("pag_mode", "PAG mode"))
# A1111's pairs: a key, then a plain value up to the next comma or a JSON string
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if any(c in text for c in ",:\n") or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_parameters(settings: dict[str, Any]) -> str:
    """``settings`` (headhunter's metadata keys) as A1111's ``parameters`` text; the head-guidance fields follow
    A1111's own, and an image made without heads has none."""
    lines = [str(settings.get("prompt", ""))]
    negative = settings.get("negative_prompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    flux = "true_cfg_scale" in settings  # FLUX.1: true CFG, and the distilled guidance as Forge names it
    cfg = settings.get("true_cfg_scale" if flux else "guidance_scale")
    pairs: list[tuple[str, Any]] = [("Steps", settings.get("num_inference_steps")), ("CFG scale", cfg),
                                    ("Seed", settings.get("seed"))]
    if settings.get("width") is not None and settings.get("height") is not None:
        pairs.append(("Size", f"{settings['width']}x{settings['height']}"))
    pairs.append(("Model", settings.get("model")))
    if flux:
        pairs.append(("Distilled CFG Scale", settings.get("guidance_scale")))
    if settings.get("pag_heads"):
        for key, label in _HEAD_FIELDS:
            value = settings.get(key)
            if isinstance(value, (list, tuple)):
                value = "-".join(f"{v:g}" for v in value)
            pairs.append((label, value))
    lines.append(", ".join(f"{label}: {_quote(value)}" for label, value in pairs if value is not None))
    return "\n".join(lines)


def _number(text: str, kind: type) -> Any:
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        return None


def parse_a1111(text: str) -> dict[str, Any]:
    """The shared fields (:data:`SHARED_FIELDS`) of an A1111 ``parameters`` text; ValueError if it has no
    ``Key: value`` line."""
    lines = text.strip().split("\n")
    pairs = dict((k.strip(), json.loads(v) if v[:1] == '"' else v.strip()) for k, v in _PAIR.findall(lines[-1]))
    if len(pairs) < 3:  # A1111 reads a last line with fewer pairs as part of the prompt
        raise ValueError("its parameters text has no 'Steps: …, Seed: …' line")
    prompt, negative, in_negative = [], [], False
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    found: dict[str, Any] = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    for key, label, kind in (("seed", "Seed", int), ("num_inference_steps", "Steps", int), ("cfg_scale", "CFG scale", float),
                             ("distilled_cfg_scale", "Distilled CFG Scale", float)):
        if label in pairs:
            found[key] = _number(pairs[label], kind)
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", pairs.get("Size", ""))
    if size:
        found["width"], found["height"] = int(size[1]), int(size[2])
    return {k: v for k, v in found.items() if v is not None}


def _text_of(graph: dict, link: Any, found: dict, depth: int = 0) -> str | None:
    """The prompt text a conditioning input leads to (through nodes such as FluxGuidance that pass it on)."""
    if not (isinstance(link, list) and link and str(link[0]) in graph) or depth > 8:
        return None
    node = graph[str(link[0])]
    inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
    if isinstance(inputs.get("guidance"), (int, float)):
        found.setdefault("distilled_cfg_scale", float(inputs["guidance"]))
    for key in ("text", "t5xxl", "clip_l", "clip_g"):
        if isinstance(inputs.get(key), str):
            return inputs[key]
    return _text_of(graph, inputs.get("conditioning"), found, depth + 1)


def parse_comfyui(text: str) -> dict[str, Any]:
    """The shared fields of a ComfyUI ``prompt`` chunk (its API graph); ValueError if it has no sampler node."""
    graph = json.loads(text)
    if not isinstance(graph, dict):
        raise ValueError("its ComfyUI graph is not a JSON object")
    samplers = [n for n in graph.values() if isinstance(n, dict) and "KSampler" in str(n.get("class_type", ""))]
    if not samplers:
        raise ValueError("its ComfyUI graph has no KSampler node")
    inputs = samplers[0].get("inputs", {})
    found: dict[str, Any] = {}
    for key, names in (("seed", ("seed", "noise_seed")), ("num_inference_steps", ("steps",)), ("cfg_scale", ("cfg",))):
        value = next((inputs[n] for n in names if isinstance(inputs.get(n), (int, float))), None)
        if value is not None:
            found[key] = float(value) if key == "cfg_scale" else int(value)
    for key, link in (("prompt", inputs.get("positive")), ("negative_prompt", inputs.get("negative"))):
        text_found = _text_of(graph, link, found)
        if text_found is not None:
            found[key] = text_found
    latent = inputs.get("latent_image")
    if isinstance(latent, list) and str(latent[0]) in graph:
        size = graph[str(latent[0])].get("inputs", {})
        if isinstance(size.get("width"), int) and isinstance(size.get("height"), int):
            found["width"], found["height"] = size["width"], size["height"]
    return found
