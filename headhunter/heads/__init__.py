"""Naming, parsing and validating attention heads, addressed as ``L{layer}H{head}`` (``L13H17``), in modules of one
idea each:

- :mod:`.layout` — the model table (:data:`MODELS`) and :class:`HeadLayout`: which module each layer is;
- :mod:`.headset` — :class:`HeadSet` and its text grammar (``L13H17``, ``L13``, ``L13H0-5``, ``L2-4``, ``@u``);
- :mod:`.presets` — preset files (shipped ones and a search's ``selected.json``);
- :mod:`.authors` — the HeadHunter reference implementation's ``final_perturb_heads.txt`` / ``.pkl``.
"""

from .authors import read_authors_heads, restricted_unpickle
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
    "read_authors_heads",
    "restricted_unpickle",
    "save_preset",
    "unwrap_compiled",
]
