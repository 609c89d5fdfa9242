"""The Gradio studio (``headhunter ui``): generate with hand-picked heads, a head atlas per layer, short searches."""

from .app import Studio, build_app, launch

__all__ = ["Studio", "build_app", "launch"]
