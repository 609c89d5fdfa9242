"""The Gradio studio (``headhunter ui``): generate with hand-picked heads, a head atlas per layer, XY comparisons,
searches kept in a workspace."""

from .app import build_app, launch
from .settings import Settings
from .studio import Studio

__all__ = ["Settings", "Studio", "build_app", "launch"]
