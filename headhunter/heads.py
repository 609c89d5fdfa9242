"""Naming, parsing and validating attention heads.

Heads are addressed as ``L{layer}H{head}`` (``L13H17``), with layers numbered globally through the transformer: for SD3 /
SD3.5 layer ``i`` is ``transformer_blocks[i].attn``; for FLUX.1 layers ``0..D-1`` are the double-stream blocks and
``D..D+S-1`` the single-stream blocks, as in the paper.

Text grammar (case-insensitive, whitespace ignored, tokens joined by commas)::

    L13H17        one head
    L13           every head of layer 13
    L13H0-5       a head range
    L2-4          a layer range (every head of layers 2, 3, 4)
    L13H17@0.5    any token may end in @u: that token's own softness u in [0, 1]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Union

__all__ = [
    "Head",
    "HeadLayout",
    "HeadSet",
    "HeadSetLike",
    "PRESET_FORMAT",
    "list_presets",
    "load_preset",
    "preset_family",
    "preset_from_json",
    "save_preset",
    "unwrap_compiled",
]


def unwrap_compiled(module: Any) -> Any:
    """The model inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), or ``module`` itself."""
    return getattr(module, "_orig_mod", module)


PRESET_FORMAT = "headhunter.heads/1"

_TOKEN = re.compile(r"^L(\d+)(?:-(\d+))?(?:H(\d+)(?:-(\d+))?)?(?:@(.+))?$")


class Head(NamedTuple):
    """One entry of a :class:`HeadSet`. ``head`` is None for "every head of the layer"; ``softness`` None means "use
    the call's ``pag_softness``"."""

    layer: int
    head: int | None
    softness: float | None = None

    def __str__(self) -> str:
        text = f"L{self.layer}" if self.head is None else f"L{self.layer}H{self.head}"
        return text if self.softness is None else f"{text}@{_format_u(self.softness)}"


def _format_u(u: float) -> str:
    text = repr(float(u))
    return text[:-2] if text.endswith(".0") else text


def _check_softness(u: Any, where: str) -> float:
    try:
        value = float(u)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: softness {u!r} is not a number; use a value in [0, 1], e.g. @0.5") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{where}: softness {value} is outside [0, 1]")
    return value


# The transformers whose heads headhunter addresses: for each layout type, the transformer class and its attention
# layers as (block list, attention attribute, kind) in the order layers are numbered (L0 = the first block of the
# first list). Refiner blocks that run before the main stack (Z-Image) and cross-attention (Wan's attn2, SD3.5's
# image-only attn2) are not addressed.
MODELS: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "sd3": ("SD3Transformer2DModel", (("transformer_blocks", "attn", "joint"),)),
    "flux": ("FluxTransformer2DModel", (("transformer_blocks", "attn", "double"),
                                        ("single_transformer_blocks", "attn", "single"))),
    "chroma": ("ChromaTransformer2DModel", (("transformer_blocks", "attn", "double"),
                                            ("single_transformer_blocks", "attn", "single"))),
    "flux2": ("Flux2Transformer2DModel", (("transformer_blocks", "attn", "double"),
                                          ("single_transformer_blocks", "attn", "single"))),
    "qwenimage": ("QwenImageTransformer2DModel", (("transformer_blocks", "attn", "double"),)),
    "zimage": ("ZImageTransformer2DModel", (("layers", "attention", "single"),)),
    "wan": ("WanTransformer3DModel", (("blocks", "attn1", "self"),)),
}


@dataclass(frozen=True)
class HeadLayout:
    """How many attention layers and heads a transformer has, and which module each layer is.

    Attributes:
        model_type: a key of :data:`MODELS`: ``"sd3"`` (SD3 / SD3.5 MMDiT), ``"flux"`` (FLUX.1), ``"chroma"``,
            ``"flux2"``, ``"qwenimage"``, ``"zimage"`` or ``"wan"`` (Wan 2.x).
        num_layers: number of addressable attention layers (SD3-medium 24, FLUX.1 57).
        num_heads: heads per layer (24 for both families).
        head_dim: channels per head.
        num_double_layers: for models with two block lists (FLUX.1, Chroma, FLUX.2): layers ``0..num_double_layers-1``
            are the double-stream blocks, the rest single-stream.
    """

    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    num_double_layers: int = 0

    @classmethod
    def from_transformer(cls, transformer: Any) -> "HeadLayout":
        transformer = unwrap_compiled(transformer)
        classes = {type(transformer).__name__} | {base.__name__ for base in type(transformer).__mro__}
        for model_type, (class_name, stacks) in MODELS.items():
            if class_name in classes and all(hasattr(transformer, blocks) for blocks, _, _ in stacks):
                counts = [len(getattr(transformer, blocks)) for blocks, _, _ in stacks]
                first = getattr(getattr(transformer, stacks[0][0])[0], stacks[0][1])
                heads = int(first.heads)
                head_dim = int(getattr(first, "inner_dim", 0) or first.to_q.out_features) // heads
                return cls(model_type, sum(counts), heads, head_dim, num_double_layers=counts[0] if len(counts) > 1 else 0)
        supported = ", ".join(class_name for class_name, _ in MODELS.values())
        raise ValueError(f"{type(transformer).__name__} is not supported: headhunter addresses the heads of {supported}")

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def _locate(self, layer: int) -> tuple[str, str, str, int]:
        """(block list, attention attribute, kind, index in the list) of ``layer``."""
        stacks = MODELS[self.model_type][1]
        if len(stacks) > 1 and layer >= self.num_double_layers:
            return (*stacks[1], layer - self.num_double_layers)
        return (*stacks[0], layer)

    def block(self, transformer: Any, layer: int) -> Any:
        """The transformer block that holds ``layer``'s attention."""
        blocks, _, _, index = self._locate(layer)
        return getattr(unwrap_compiled(transformer), blocks)[index]

    def attention(self, transformer: Any, layer: int) -> Any:
        """The attention module of ``layer`` (cross-attention and SD3.5's image-only ``attn2`` are never addressed)."""
        return getattr(self.block(transformer, layer), self._locate(layer)[1])

    def block_kind(self, layer: int) -> str:
        """``"joint"`` (SD3), ``"double"`` or ``"single"`` (FLUX.1, Chroma, FLUX.2; Qwen-Image is double, Z-Image
        single), ``"self"`` (Wan's self-attention)."""
        return self._locate(layer)[2]

    def module_name(self, layer: int) -> str:
        blocks, attribute, _, index = self._locate(layer)
        return f"{blocks}.{index}.{attribute}"

    def describe(self) -> str:
        text = f"layers 0-{self.num_layers - 1} (L0..L{self.num_layers - 1}), heads 0-{self.num_heads - 1}"
        if self.num_double_layers:
            text += f"; layers 0-{self.num_double_layers - 1} are double-stream, the rest single-stream"
        return text

    def all_heads(self) -> "HeadSet":
        return HeadSet([Head(layer, head) for layer in range(self.num_layers) for head in range(self.num_heads)])


class HeadSet:
    """An immutable, ordered set of attention heads, each with an optional own softness u.

    Build one with :meth:`parse` (``"L13H17, L2@0.5"``), from ``[(13, 17), ...]`` or ``{(13, 17): 0.5}``, or with
    :meth:`coerce`, which also takes preset names and preset files. Iteration yields :class:`Head` entries in
    selection order; ``str(hs)`` is a canonical text form that parses back to an equal set. Two sets are equal when
    they hold the same entries with the same softness, whatever their order.
    """

    __slots__ = ("_entries",)

    def __init__(self, heads: Iterable[Head | tuple] = ()):
        entries: dict[tuple[int, int | None], float | None] = {}
        for item in heads:
            head = item if isinstance(item, Head) else _head_from_tuple(item)
            key = (head.layer, head.head)
            if key not in entries or head.softness is not None:
                entries[key] = head.softness
        self._entries = entries

    # construction -------------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "HeadSet":
        """Parse the text grammar described in the module docstring. Raises ValueError naming the bad token."""
        if not isinstance(text, str):
            raise ValueError(f"expected a head spec string such as 'L13H17,L2H3@0.5', got {type(text).__name__}")
        compact = re.sub(r"\s+", "", text).upper()
        heads: list[Head] = []
        if not compact:
            return cls()
        for token in compact.split(","):
            if not token:
                raise ValueError(f"empty head token in {text!r}: tokens are joined by single commas")
            heads.extend(_parse_token(token))
        return cls(heads)

    @classmethod
    def coerce(cls, value: "HeadSetLike") -> "HeadSet":
        """Turn anything accepted where a HeadSet is into one: a HeadSet, a spec string, a preset name, a preset JSON
        path, a list of ``(layer, head)`` / ``(layer, head, u)`` tuples, a ``{(layer, head): u}`` dict, or None."""
        if value is None:
            return cls()
        if isinstance(value, HeadSet):
            return value
        if isinstance(value, Path):
            return load_preset(value)["heads"]
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.lower().endswith(".json") or not re.match(r"^[Ll]\s*\d", stripped) and stripped:
                return load_preset(stripped)["heads"]
            return cls.parse(stripped)
        if isinstance(value, Mapping):
            return cls(_head_from_tuple((*_key_tuple(k), u)) for k, u in value.items())
        if isinstance(value, (list, tuple)):
            return cls(_head_from_tuple(item) for item in value)
        raise ValueError(
            f"cannot read heads from {type(value).__name__}; pass a spec like 'L13H17,L2', a preset name, "
            "a JSON path, [(13, 17), ...] or {(13, 17): 0.5}"
        )

    @classmethod
    def from_json(cls, data: str | list) -> "HeadSet":
        """Inverse of :meth:`to_json`; also accepts the already-decoded list."""
        items = json.loads(data) if isinstance(data, str) else data
        if not isinstance(items, list):
            raise ValueError("HeadSet JSON must be a list of {'layer', 'head', 'softness'} objects")
        return cls(Head(int(d["layer"]), d.get("head"), d.get("softness")) for d in items)

    # views --------------------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps([{"layer": h.layer, "head": h.head, "softness": h.softness} for h in self])

    def __iter__(self) -> Iterator[Head]:
        return (Head(layer, head, u) for (layer, head), u in self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            item = next(iter(HeadSet.parse(item)), None)
        if isinstance(item, tuple) and len(item) >= 2:
            return (item[0], item[1]) in self._entries
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadSet):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __or__(self, other: "HeadSetLike") -> "HeadSet":
        return self.union(other)

    def union(self, *others: "HeadSetLike") -> "HeadSet":
        """Entries of ``self`` then new entries of ``others`` in order; an entry's own softness from a later set wins."""
        heads = list(self)
        for other in others:
            heads.extend(HeadSet.coerce(other))
        return HeadSet(heads)

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self._entries})

    def __str__(self) -> str:
        return ",".join(_compress(list(self)))

    def __repr__(self) -> str:
        return f"HeadSet({str(self)!r})"

    # checking -----------------------------------------------------------------------------------------------------
    def validate(self, layout: HeadLayout) -> "HeadSet":
        """Raise ValueError naming the first token outside ``layout``; returns self for chaining."""
        for head in self:
            problem = None
            if not 0 <= head.layer < layout.num_layers:
                problem = f"layer {head.layer} is out of range"
            elif head.head is not None and not 0 <= head.head < layout.num_heads:
                problem = f"head {head.head} is out of range"
            if problem:
                raise ValueError(f"{Head(head.layer, head.head)}: {problem}; this model has {layout.describe()}")
        return self

    def resolve(self, layout: HeadLayout) -> "HeadSet":
        """Validate against ``layout`` and expand whole-layer entries into their heads."""
        self.validate(layout)
        heads: list[Head] = []
        for head in self:
            if head.head is None:
                heads.extend(Head(head.layer, h, head.softness) for h in range(layout.num_heads))
            else:
                heads.append(head)
        return HeadSet(heads)

    def softness_map(self, layout: HeadLayout, default: float) -> dict[tuple[int, int], float]:
        """``{(layer, head): u}`` with every entry's own u, or ``default`` where it has none."""
        default = _check_softness(default, "pag_softness")
        return {(h.layer, h.head): default if h.softness is None else h.softness for h in self.resolve(layout)}


HeadSetLike = Union[HeadSet, str, Path, Mapping, list, tuple, None]


def _parse_token(token: str) -> list[Head]:
    match = _TOKEN.match(token)
    if match is None:
        raise ValueError(
            f"bad head token {token!r}: write L<layer>H<head> (L13H17), L<layer> (L13), ranges L13H0-5 / L2-4, "
            "optionally with @u (L13H17@0.5)"
        )
    l0, l1, h0, h1, u = match.groups()
    if l1 is not None and h0 is not None:
        raise ValueError(f"bad head token {token!r}: a layer range (L2-4) cannot carry heads; list each layer")
    softness = _check_softness(u, token) if u is not None else None
    first_layer, last_layer = int(l0), int(l1 if l1 is not None else l0)
    if last_layer < first_layer:
        raise ValueError(f"bad head token {token!r}: layer range {first_layer}-{last_layer} is reversed")
    if h0 is None:
        return [Head(layer, None, softness) for layer in range(first_layer, last_layer + 1)]
    first_head, last_head = int(h0), int(h1 if h1 is not None else h0)
    if last_head < first_head:
        raise ValueError(f"bad head token {token!r}: head range {first_head}-{last_head} is reversed")
    return [Head(first_layer, head, softness) for head in range(first_head, last_head + 1)]


def _key_tuple(key: Any) -> tuple:
    if isinstance(key, str):
        heads = list(HeadSet.parse(key))
        if len(heads) != 1:
            raise ValueError(f"dict key {key!r} must name exactly one head or layer")
        return heads[0].layer, heads[0].head
    if isinstance(key, int):
        return key, None
    return tuple(key)


def _head_from_tuple(item: Any) -> Head:
    if isinstance(item, Head):
        return item
    if isinstance(item, str):
        heads = list(HeadSet.parse(item))
        if len(heads) != 1:
            raise ValueError(f"{item!r} must name exactly one head or layer")
        return heads[0]
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"head entry {item!r} must be (layer, head) or (layer, head, softness)")
    layer, head = item[0], item[1]
    softness = item[2] if len(item) == 3 else None
    for name, value in (("layer", layer), ("head", head)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"head entry {item!r}: {name} must be a non-negative integer")
    where = str(Head(layer, head))
    return Head(layer, head, None if softness is None else _check_softness(softness, where))


def _compress(heads: list[Head]) -> list[str]:
    """Canonical tokens: runs of consecutive heads of one layer (or consecutive whole layers) with the same softness
    become ranges. Order is preserved, so the text parses back to the same entries in the same order."""
    tokens: list[str] = []
    i = 0
    while i < len(heads):
        first = heads[i]
        j = i
        while j + 1 < len(heads):
            cur, nxt = heads[j], heads[j + 1]
            same_kind = nxt.softness == first.softness and (nxt.head is None) == (first.head is None)
            if first.head is None:
                step = same_kind and nxt.layer == cur.layer + 1
            else:
                step = same_kind and nxt.layer == first.layer and nxt.head == cur.head + 1
            if not step:
                break
            j += 1
        last = heads[j]
        if first.head is None:
            text = f"L{first.layer}" if j == i else f"L{first.layer}-{last.layer}"
        else:
            text = f"L{first.layer}H{first.head}" if j == i else f"L{first.layer}H{first.head}-{last.head}"
        if first.softness is not None:
            text += f"@{_format_u(first.softness)}"
        tokens.append(text)
        i = j + 1
    return tokens


# presets ----------------------------------------------------------------------------------------------------------
def preset_family(model: str, layout: "HeadLayout") -> str:
    """The preset family of a model: its layout's type (``"sd3"``, ``"flux"``), prefixed ``tiny-`` for the tiny
    offline models (their few heads are not the real models'); a toy model's name (``"toy-shapes"``) for the trained
    toy models, whose heads are their own."""
    from .testing import TOY_MODELS

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
    """Load a preset by shipped name (``"sd3-shadow"``) or from a JSON file (e.g. a search's ``selected.json``).

    Returns the preset's fields with ``"heads"`` as a :class:`HeadSet`.
    """
    path = Path(name_or_path)
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
