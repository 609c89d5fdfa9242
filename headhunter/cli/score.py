"""``headhunter score``: score image files with an objective spec."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import UsageError, import_modules, parse_option

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    """Prompts come from --prompt or the images' headhunter metadata."""
    from PIL import Image, UnidentifiedImageError

    from headhunter.metadata import read_settings
    from headhunter.pipelines.loading import check_device, default_device
    from headhunter.scorers import ScorerUnavailable, load_scorer
    from headhunter.scorers.base import parse_spec

    import_modules(args.imports)
    parse_spec(args.objective)
    device = check_device(args.device) if args.device else default_device()
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such image file(s): {', '.join(missing)}")
    for path in paths:  # every file readable before a scorer loads
        try:
            with Image.open(path) as image:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise UsageError(f"{path} is not an image that can be read ({type(err).__name__}: {err})") from None
    prompts = []
    for path in paths:
        if args.prompt is not None:
            prompts.append(args.prompt)
            continue
        try:
            prompts.append(read_settings(path)["prompt"])
        except (ValueError, KeyError):
            raise UsageError(f"{path} carries no prompt in its metadata; pass --prompt") from None
    try:
        scorer = load_scorer(args.objective, device=device, **dict(args.option))
    except ScorerUnavailable as err:
        raise UsageError(str(err)) from None
    results = []
    for path, prompt in zip(paths, prompts):  # one at a time: images may differ in size
        with Image.open(path) as image:
            results.append({"image": str(path), "prompt": prompt, "score": float(scorer([image.convert("RGB")], [prompt])[0])})
    if args.json:
        print(json.dumps({"objective": args.objective, "results": results}, indent=2))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            print(f"{r['image']:<{width}}  {r['score']:.4f}")
    return 0


def register(sub: Any) -> None:
    score = sub.add_parser("score", help="score image files with an objective (see headhunter.scorers)")
    score.add_argument("images", nargs="+", help="image files")
    score.add_argument("--objective", required=True, help="spec, e.g. 'pickscore', '0.7*pickscore + 0.3*aesthetic', 'style:golden hour'")
    score.add_argument("--prompt", default=None, help="prompt for every image (default: each PNG's headhunter metadata)")
    score.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first, so objectives it registers with register_scorer can be named")
    score.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                       help="scorer option, e.g. model_id=/path/to/weights or local_files_only=true")
    score.add_argument("--device", default=None)
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(func=run)
