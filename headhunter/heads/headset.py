"""Head sets and their text grammar.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, NamedTuple, Union

if TYPE_CHECKING:
    from .layout import HeadLayout

__all__ = ["Head", "HeadSet", "HeadSetLike"]

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
        heads: list[Head] = []
        if not text.strip():
            return cls()
        for written in text.split(","):
            token = re.sub(r"\s+", "", written).upper()
            if not token:
                raise ValueError(f"empty head token in {text!r}: tokens are joined by single commas")
            try:
                heads.extend(_parse_token(token))
            except ValueError as err:
                if re.search(r"\S\s+\S", written):  # "L1H0 L2H1": whitespace is ignored, so name what was typed
                    raise ValueError(f"{err}; it was written {written.strip()!r}, and spaces are ignored: separate "
                                     "heads with commas (L1H0,L2H1)") from None
                raise
        return cls(heads)

    @classmethod
    def coerce(cls, value: "HeadSetLike") -> "HeadSet":
        """Turn anything accepted where a HeadSet is into one: a HeadSet, a spec string, a preset name, a preset JSON
        path, the reference implementation's ``final_perturb_heads.txt`` / ``.pkl``, a list of ``(layer, head)`` / ``(layer, head, u)`` tuples, a ``{(layer, head): u}`` dict, or None."""
        from .presets import load_preset  # presets hold head sets: imported here, not at the top

        if value is None:
            return cls()
        if isinstance(value, HeadSet):
            return value
        if isinstance(value, Path):
            return load_preset(value)["heads"]
        if isinstance(value, str):
            stripped = value.strip()
            is_file = stripped.lower().endswith((".json", ".txt", ".pkl", ".pickle"))
            if is_file or not re.match(r"^[Ll]\s*\d", stripped) and stripped:
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
