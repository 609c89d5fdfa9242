"""What defines a search run: everything that changes its result is in :class:`SearchConfig`, and a run directory
holds exactly one config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

__all__ = ["SearchConfig", "prompt_seed_pairs", "style_prompts"]

STRATEGIES = ("greedy", "halving")


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
    extra: dict = field(default_factory=dict)

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
        return cls(**data)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: "SearchConfig") -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [key for key in mine if mine[key] != theirs.get(key)]
