"""The toy-shapes testbed: a prompt grammar and its procedurally rendered images (:mod:`.data`), read back by the
weight-free ``shapes`` objective (:mod:`headhunter.scorers.shapes`), and a small SD3-architecture model
(:mod:`.model`) trained on them offline (:mod:`.train`), shipped in ``toy-shapes/`` and loaded by
``headhunter.testing.toy_pipeline()`` or ``--model toy-shapes``: guidance and search measured on a model that learned
something."""

from .data import COLORS, POSITIONS, SHAPES, STYLES, Scene, all_scenes, apply_style, parse_prompt, render

__all__ = ["COLORS", "POSITIONS", "SHAPES", "STYLES", "Scene", "all_scenes", "apply_style", "parse_prompt", "render"]
