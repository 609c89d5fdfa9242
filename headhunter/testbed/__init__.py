"""The toy-shapes testbed: a prompt grammar and its procedurally rendered images (:mod:`.data`), read back by the
weight-free ``shapes`` objective (:mod:`headhunter.scorers.shapes`), and a small SD3-architecture model
(:mod:`.model`) trained on them offline (:mod:`.train`), shipped in ``toy-shapes/`` and loaded by
``headhunter.testing.toy_pipeline()`` or ``--model toy-shapes``: guidance and search measured on a model that learned
something. :mod:`.scenes` is the world of the second testbed, two objects in a relation, read by the ``scenes``
objective (:mod:`headhunter.scorers.scenes`); its model ``toy-scenes`` is trained by the same trainer and shipped
in ``toy-scenes/``. :mod:`.worlds` describes both worlds to the trainer and to the tools."""

from .data import COLORS, POSITIONS, SHAPES, STYLES, Scene, all_scenes, apply_style, parse_prompt, render
from .worlds import WORLDS

# The trained toy models shipped with the package (loaded by ``headhunter.testing.toy_pipeline`` and ``--model``)
TOY_MODELS = tuple(WORLDS)

__all__ = ["COLORS", "POSITIONS", "SHAPES", "STYLES", "Scene", "TOY_MODELS", "WORLDS", "all_scenes", "apply_style",
           "parse_prompt", "render"]
