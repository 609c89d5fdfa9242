"""``headhunter ui``: the Gradio studio."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from .common import MODEL_HELP, UsageError

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the studio needs Gradio: pip install 'headhunter[ui]'")
    from headhunter.pipelines.loading import check_device, model_family
    from headhunter.ui import launch

    check_device(args.device)
    model_family(args.model)  # an unsupported model is refused here, before the page is built
    launch(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype, offload=args.offload,
           workspace=args.workspace)
    return 0


def register(sub: Any) -> None:
    ui = sub.add_parser("ui", help="the Gradio studio")
    ui.add_argument("--model", default="toy-shapes", help=MODEL_HELP + "; default toy-shapes")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--device", default=None, help="cuda when available, else cpu")
    ui.add_argument("--dtype", default="auto")
    ui.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (needs a GPU)")
    ui.add_argument("--workspace", default="headhunter-ui-runs", help="folder for the studio's search runs")
    ui.set_defaults(func=run)
