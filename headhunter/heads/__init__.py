"""Naming, parsing and validating attention heads, in three modules of one idea each:

- :mod:`.layout` — the model table (:data:`MODELS`) and :class:`HeadLayout`;
- :mod:`.headset` — :class:`HeadSet` and the text grammar below;
- :mod:`.presets` — preset files (shipped ones and a search's ``selected.json``).


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

from .headset import Head, HeadSet, HeadSetLike
from .layout import MODELS, HeadLayout, unwrap_compiled
from .presets import PRESET_FORMAT, list_presets, load_preset, preset_family, preset_from_json, save_preset

__all__ = [
    "Head",
    "HeadLayout",
    "HeadSet",
    "HeadSetLike",
    "MODELS",
    "PRESET_FORMAT",
    "list_presets",
    "load_preset",
    "preset_family",
    "preset_from_json",
    "save_preset",
    "unwrap_compiled",
]
