"""The toy-shapes testbed: a prompt grammar and its procedurally rendered images (:mod:`.data`), read back by the
weight-free ``shapes`` objective (:mod:`headhunter.scorers.shapes`), so that guidance and search can be measured on a
small model trained offline."""

from .data import COLORS, POSITIONS, SHAPES, STYLES, Scene, all_scenes, apply_style, parse_prompt, render

__all__ = ["COLORS", "POSITIONS", "SHAPES", "STYLES", "Scene", "all_scenes", "apply_style", "parse_prompt", "render"]
