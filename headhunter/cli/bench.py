"""``headhunter bench``: run a script of the source checkout's benchmarks/ folder (not part of the installed
package)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import UsageError

__all__ = ["register"]

BENCHMARKS = ("adaptive_reuse", "cheap_modes", "guidance", "guider", "search")


def run(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{args.name}.py"
    if not script.is_file():
        raise UsageError(f"benchmarks/{args.name}.py is not here: `headhunter bench` runs from a source checkout "
                         "(pip install -e .)")
    return subprocess.run([sys.executable, str(script), *args.options], check=False).returncode


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark script (" + ", ".join(BENCHMARKS) + "); options pass through")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark script, e.g. --repeats 3")
    bench.set_defaults(func=run)
