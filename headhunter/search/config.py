"""What defines a search run: everything that changes its result is in :class:`SearchConfig`, and a run directory
holds exactly one config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

__all__ = ["SearchConfig", "prompt_seed_pairs", "spread_order", "style_prompts"]

STRATEGIES = ("greedy", "halving", "coarse")


def prompt_seed_pairs(prompts: Sequence[str], seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """Every prompt with every seed (prompt-major), or, with ``seeds=None``, ``prompts`` already as ``(prompt, seed)``
    pairs."""
    if seeds is None:
        pairs = [(str(p), int(s)) for p, s in prompts]
    else:
        pairs = [(str(p), int(s)) for p in prompts for s in seeds]
    if not pairs:
        raise ValueError("the search needs at least one prompt-seed pair")
    return pairs


def spread_order(pairs: Sequence[tuple[str, int]]) -> list[int]:
    """Pair indices in round-robin order over prompts: every prompt's first pair, then every prompt's second, ...

    Successive halving scores its first stages on a prefix of this order, so those stages see as many different
    prompts (and, with prompts × seeds, seeds) as they have pairs, instead of the first prompt's seeds only.
    """
    occurrence: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    keyed = []
    for index, (prompt, _) in enumerate(pairs):
        first_seen.setdefault(prompt, len(first_seen))
        keyed.append((occurrence.get(prompt, 0), first_seen[prompt], index))
        occurrence[prompt] = occurrence.get(prompt, 0) + 1
    return [index for _, _, index in sorted(keyed)]


def style_prompts(style: str, contents: Sequence[str]) -> list[str]:
    """The paper's style-search prompts: ``"style, content"`` for each content prompt."""
    return [f"{style}, {content}" for content in contents]


@dataclass(frozen=True)
class SearchConfig:
    """The settings that determine a search's result (saved as ``config.json`` in the run directory)."""

    model: str
    layout: tuple[int, int]
    objective: str
    pairs: tuple[tuple[str, int], ...]
    candidates: tuple[tuple[int, int], ...]
    top_k: int
    rounds: int
    strategy: str = "greedy"
    pag_scale: float = 3.0
    pag_softness: float = 1.0
    pag_target: str = "identity"
    pag_scope: str = "joint"
    num_inference_steps: int = 20
    height: int | None = None
    width: int | None = None
    guidance_scale: float | None = None
    halving_initial_pairs: int = 2
    halving_keep: float = 0.5
    coarse_steps: int | None = None
    extra: dict = field(default_factory=dict)
    dtype: str = ""
    # Where and with what it ran (device type, library versions): recorded, compared only to warn, since a resumed
    # run on another device or version may score a little differently but is still the same search.
    environment: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose {' or '.join(STRATEGIES)}")
        if self.top_k < 1 or self.rounds < 1:
            raise ValueError("top_k and rounds must be at least 1")
        if self.top_k * self.rounds > len(self.candidates):
            raise ValueError(
                f"top_k × rounds = {self.top_k * self.rounds} exceeds the {len(self.candidates)} candidate heads"
            )
        if not 0 < self.halving_keep < 1:
            raise ValueError("halving_keep must be in (0, 1)")
        if self.halving_initial_pairs < 1:
            raise ValueError("halving_initial_pairs must be at least 1")
        if (self.strategy == "coarse") != (self.coarse_steps is not None):
            raise ValueError("coarse_steps is the coarse strategy's, and it needs them")
        if self.coarse_steps is not None and not 1 <= self.coarse_steps <= self.num_inference_steps:
            raise ValueError(f"coarse_steps must be between 1 and num_inference_steps ({self.num_inference_steps})")

    @property
    def scoring_steps(self) -> int:
        """The denoising steps of every image the search scores."""
        return self.coarse_steps if self.coarse_steps is not None else self.num_inference_steps

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        data["candidates"] = [list(c) for c in self.candidates]
        data["layout"] = list(self.layout)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SearchConfig":
        data = dict(data)
        data["pairs"] = tuple((str(p), int(s)) for p, s in data["pairs"])
        data["candidates"] = tuple((int(l), int(h)) for l, h in data["candidates"])
        data["layout"] = tuple(data["layout"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def fingerprint(self) -> str:
        data = self.to_json()
        del data["environment"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: "SearchConfig") -> list[str]:
        """The fields that determine the result and differ from ``other``."""
        mine, theirs = self.to_json(), other.to_json()
        return [f.name for f in fields(self) if f.compare and mine[f.name] != theirs.get(f.name)]

    def environment_changes(self, other: "SearchConfig") -> list[str]:
        """``"key: old -> new"`` for each environment entry (device type, versions) that differs in ``other``."""
        keys = sorted(set(self.environment) | set(other.environment))
        return [f"{k}: {self.environment.get(k)} -> {other.environment.get(k)}" for k in keys
                if self.environment.get(k) != other.environment.get(k)]
