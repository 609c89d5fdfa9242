"""The scorer registry, the spec grammar and composite objectives."""

from __future__ import annotations

import inspect
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .images import ImagesLike, to_tensor

__all__ = ["Scorer", "ScorerInfo", "ScorerUnavailable", "available_scorers", "load_scorer", "register_scorer", "scorer_info"]


class ScorerUnavailable(RuntimeError):
    """The weights a neural scorer needs are neither cached nor reachable; the message names them and how to get them."""


@dataclass(frozen=True)
class ScorerInfo:
    """A registered objective.

    Attributes:
        name: the spec name (``pickscore``).
        factory: ``factory(argument, device=..., dtype=..., **options) -> callable(images [B,3,H,W] in [0,1], prompts)``.
        argument: ``"required"``, ``"optional"`` or ``"none"`` (the part after ``name:``).
        reference: ``(mean, std)`` of typical scores, used to standardise the terms of a composite spec.
        description, weights, size, license: documentation (README's scorer table).
    """

    name: str
    factory: Callable[..., Callable]
    argument: str = "none"
    reference: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    weights: str = "none (weight-free)"
    size: str = "-"
    license: str = "-"


_REGISTRY: dict[str, ScorerInfo] = {}
_REGISTRY_LOCK = threading.Lock()


def register_scorer(
    name: str,
    fn: Callable | None = None,
    *,
    argument: str = "none",
    reference: tuple[float, float] = (0.0, 1.0),
    description: str = "",
    factory: bool = False,
    **docs: str,
) -> Callable:
    """Register an objective under ``name`` so specs (and the CLI) can use it.

    ``fn(images, prompts) -> Tensor[B]`` receives images as a float tensor [B, 3, H, W] in [0, 1] and the prompts;
    with ``argument="required"`` it also receives the text after ``name:`` as a third argument. With ``factory=True``,
    ``fn(argument, device=..., dtype=..., **options)`` builds the scorer instead (for models loaded once).
    Usable as a decorator: ``@register_scorer("redness")``.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_\-]*", name):
        raise ValueError(f"scorer name {name!r} must be lowercase letters, digits, '_' or '-', starting with a letter")
    if argument not in ("none", "optional", "required"):
        raise ValueError("argument must be 'none', 'optional' or 'required'")

    def add(function: Callable) -> Callable:
        if factory:
            build = function
        else:
            takes_argument = argument != "none"

            def build(arg: str | None, device: Any = None, dtype: Any = None, **options: Any) -> Callable:
                if options:
                    raise ValueError(f"scorer {name!r} takes no options, got {sorted(options)}")
                if takes_argument:
                    return lambda images, prompts: function(images, prompts, arg)
                return function

        info = ScorerInfo(name, build, argument, tuple(reference), description or (function.__doc__ or "").strip().split("\n")[0], **docs)
        with _REGISTRY_LOCK:
            _REGISTRY[name] = info
        return function

    return add(fn) if fn is not None else add


def available_scorers() -> dict[str, ScorerInfo]:
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


def scorer_info(name: str) -> ScorerInfo:
    registry = available_scorers()
    if name not in registry:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


@dataclass(frozen=True)
class _Term:
    weight: float
    name: str
    argument: str | None
    explicit_weight: bool


_TERM = re.compile(r"^(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z][\w\-]*)(?::(?P<arg>.*))?$", re.S)


def parse_spec(spec: str) -> list[_Term]:
    """``[weight*]name[:argument]`` terms joined by ``+``. Raises ValueError naming the bad term."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty objective spec; write e.g. 'pickscore', '0.7*pickscore + 0.3*aesthetic', 'style:golden hour'")
    terms = []
    for raw in spec.split("+"):
        text = raw.strip()
        match = _TERM.match(text)
        if match is None:
            raise ValueError(f"bad objective term {text!r}: write [weight*]name[:argument], e.g. 0.5*aesthetic")
        name = match["name"].lower()
        info = scorer_info(name)
        argument = match["arg"].strip() if match["arg"] is not None else None
        if info.argument == "required" and not argument:
            raise ValueError(f"objective term {text!r}: {name} needs an argument, e.g. {name}:golden hour")
        if info.argument == "none" and argument is not None:
            raise ValueError(f"objective term {text!r}: {name} takes no ':argument'")
        weight = float(match["w"]) if match["w"] is not None else 1.0
        if not math.isfinite(weight):
            raise ValueError(f"objective term {text!r}: weight must be finite")
        terms.append(_Term(weight, name, argument or None, match["w"] is not None))
    return terms


@dataclass
class Scorer:
    """A loaded objective: ``scorer(images, prompts) -> Tensor[B]`` (higher is better).

    A spec with one term and no weight returns that scorer's raw score. Otherwise every term is standardised with its
    scorer's reference ``(mean, std)`` — ``(s − mean) / std`` — then weighted and summed, so terms on different
    scales (PickScore ≈ 21, aesthetic ≈ 5.5) mix in comparable units.
    """

    spec: str
    terms: list[tuple[_Term, ScorerInfo, Callable]]
    device: torch.device
    grad: bool = False

    def __call__(self, images: ImagesLike, prompts: Sequence[str] | str) -> torch.Tensor:
        pixels = to_tensor(images, self.device)
        if isinstance(prompts, str):
            prompts = [prompts] * pixels.shape[0]
        prompts = list(prompts)
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(prompts)} prompts")
        context = torch.enable_grad() if self.grad else torch.no_grad()
        with context:
            if len(self.terms) == 1 and not self.terms[0][0].explicit_weight:
                return self._run(self.terms[0][2], pixels, prompts)
            total = torch.zeros(pixels.shape[0], device=pixels.device, dtype=torch.float32)
            for term, info, fn in self.terms:
                mean, std = info.reference
                total = total + term.weight * (self._run(fn, pixels, prompts) - mean) / std
            return total

    @staticmethod
    def _run(fn: Callable, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = torch.as_tensor(fn(pixels, prompts))
        if scores.shape != (pixels.shape[0],):
            raise ValueError(f"a scorer returned shape {tuple(scores.shape)}; expected ({pixels.shape[0]},)")
        return scores.float()


_LOADED: dict[tuple, Callable] = {}
_LOADED_LOCK = threading.Lock()


def load_scorer(spec: str, device: Any = None, dtype: Any = None, grad: bool = False, **options: Any) -> Scorer:
    """Load the objective ``spec``; each neural model is loaded once per (name, argument, device, dtype, options) and
    reused by later calls.

    Args:
        spec: terms joined by ``+``, each ``[weight*]name[:argument]``: ``pickscore``, ``0.7*pickscore +
            0.3*aesthetic``, ``style:golden hour``.
        device, dtype: where the neural scorers run (default cpu, float32).
        grad: keep the autograd graph so gradients reach the pixels (default: scores under ``torch.no_grad()``).
        options: passed to every term's factory (e.g. ``local_files_only=True``, ``model_id=...``).
    """
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    terms = []
    for term in parse_spec(spec):
        info = scorer_info(term.name)
        key = (term.name, term.argument, str(device), str(dtype), tuple(sorted((k, repr(v)) for k, v in options.items())))
        with _LOADED_LOCK:
            fn = _LOADED.get(key)
        if fn is None:
            accepted = inspect.signature(info.factory).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
            unknown = [k for k in options if k not in accepted and not takes_any]
            if unknown:
                raise ValueError(f"scorer {term.name!r} does not take option(s) {unknown}")
            fn = info.factory(term.argument, device=device, dtype=dtype, **options)
            with _LOADED_LOCK:
                _LOADED.setdefault(key, fn)
        terms.append((term, info, fn))
    return Scorer(spec, terms, device, grad)
