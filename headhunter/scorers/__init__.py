"""Objectives: ``load_scorer(spec)`` returns ``scorer(images, prompts) -> Tensor[B]``, higher is better.

Weight-free image statistics run anywhere; neural scorers (PickScore, CLIP, style, LAION aesthetic, ImageReward,
HPS v2 / v2.1) are rebuilt on transformers' model classes and load the published weights from the Hugging Face hub
(ids overridable, local paths accepted). See :func:`load_scorer` for the spec grammar.
"""

from .base import Scorer, ScorerUnavailable, available_scorers, load_scorer, register_scorer, scorer_info

# Importing the modules registers their scorers.
from . import statistics as _statistics  # noqa: E402,F401  isort: skip
from . import clip as _clip  # noqa: E402,F401  isort: skip
from . import imagereward as _imagereward  # noqa: E402,F401  isort: skip
from . import shapes as _shapes  # noqa: E402,F401  isort: skip
from . import scenes as _scenes  # noqa: E402,F401  isort: skip

__all__ = ["Scorer", "ScorerUnavailable", "available_scorers", "load_scorer", "register_scorer", "scorer_info"]
