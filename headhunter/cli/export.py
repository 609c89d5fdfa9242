"""``headhunter export``: a finished search run as a folder to share (and, with --push-to-hub, on the Hub)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import UsageError

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    from headhunter.sharing import export_run, push_export

    try:
        out = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"wrote {out}: guider_config.json, headhunter.json, README.md"
          f"{', heatmap.png' if (out / 'heatmap.png').is_file() else ''}")
    if args.push_to_hub:
        print(f"uploaded to {push_export(out, args.push_to_hub, private=args.private)}")
    return 0


def register(sub: Any) -> None:
    export = sub.add_parser("export", help="write a finished search run as a folder HeadHunterGuidance.from_pretrained "
                            "and pag_heads load (optionally pushed to the Hub)")
    export.add_argument("run_dir", help="the search's run directory (its --run-dir)")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="also upload the folder to this Hub model repo (user/name; needs a login or HF_TOKEN)")
    export.add_argument("--private", action="store_true", help="create the Hub repo private")
    export.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    export.set_defaults(func=run)
