"""``headhunter eval``: every setting × prompt × seed generated, scored, summarised and reported; resumable."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from typing import Any, Sequence

from .common import (MODEL_HELP, UsageError, check_writable_dir, import_modules, parse_option, parse_seeds, parse_size,
                     positive_int, run_target)

__all__ = ["register", "split_metrics"]


def split_metrics(texts: Sequence[str]) -> list[str]:
    """Metric specs from comma-separated lists; a comma not followed by a scorer name stays inside the spec
    (``style:golden hour, warm glow``)."""
    from headhunter.scorers import available_scorers

    names = "|".join(sorted((re.escape(n) for n in available_scorers()), key=len, reverse=True))
    metrics: list[str] = []
    for text in texts:
        for piece in text.split(","):
            starts_term = re.match(rf"^\s*(?:[0-9.]+\s*\*\s*)?(?:{names})(?![\w\-])", piece)
            if metrics and not starts_term and metrics[-1].startswith(("style:",)):
                metrics[-1] += "," + piece
            elif piece.strip():
                metrics.append(piece.strip())
    return metrics


def run(args: argparse.Namespace) -> int:
    from headhunter.evaluate import Evaluation, load_settings_file, parse_setting, read_prompts
    from headhunter.evaluate.benchmarks import HPSV2_STYLES, check_benchmark, export_benchmark
    from headhunter.guidance import default_cfg_scale
    from headhunter.pipelines import load_pipeline
    from headhunter.scorers import ScorerUnavailable
    from headhunter.scorers.base import parse_spec

    import_modules(args.imports)
    prompts = read_prompts(args.prompts)
    settings = [s for text in args.setting for s in parse_setting(text)]
    if args.settings_file:
        settings += load_settings_file(args.settings_file)
    if not settings:
        raise UsageError("give at least one --setting (e.g. 'base:' for no guidance) or a --settings-file")
    metrics = split_metrics(args.metrics)
    if not metrics:
        raise UsageError("give at least one metric, e.g. --metrics colorfulness,sharpness")
    for metric in metrics:
        parse_spec(metric)
    names = [s.name for s in settings]
    if args.baseline is not None and args.baseline not in names:
        raise UsageError(f"--baseline {args.baseline!r} is not one of the settings: {', '.join(names)}")
    check_writable_dir(args.out, "--out")
    for kind, target in args.export:
        check_benchmark(kind, prompts, target)  # before any image: a prompt file the benchmark cannot take
    device, family, builtin, width, height = run_target(args)
    defaults: dict[str, Any] = {"num_inference_steps": args.steps or (builtin.steps if builtin else 28), "width": width,
                                "height": height}
    if family != "flux":
        defaults["guidance_scale"] = default_cfg_scale(family)  # CFG off unless a setting asks for it (Wan: on)
    defaults.update(builtin.call if builtin else {})
    pipe = load_pipeline(args.model, device, args.dtype, False)
    pipe.set_progress_bar_config(disable=True)
    command = "headhunter " + shlex.join(args.argv)
    try:
        result = Evaluation(pipe, prompts, args.seeds, settings, metrics, args.out, defaults=defaults,
                            model_name=args.model, batch_size=args.batch_size, scorer_options=dict(args.option),
                            commands=[command], baseline=args.baseline, fresh=args.fresh).run()
    except ScorerUnavailable as err:
        raise UsageError(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{len(result.rows)} images ({result.generated} generated now) in {result.out_dir}")
        for row in result.summary:
            if row.get("category", "all") != "all":
                continue
            line = f"  {row['setting']:<24} {row['metric']:<16} {row['mean']:.4g}  [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
            if "diff_mean" in row:
                line += (f"  vs {args.baseline}: {row['diff_mean']:+.4g} [{row['diff_ci_low']:.4g}, "
                         f"{row['diff_ci_high']:.4g}], wins {row['win_rate']:.0%}")
            print(line)
        categories = list(dict.fromkeys(r["category"] for r in result.summary if r.get("category", "all") != "all"))
        if categories:
            print(f"  ({len(categories)} categories: {', '.join(categories)}; per-category rows in "
                  f"{result.out_dir / 'summary.csv'} and the report)")
        print(f"report: {result.report}")
        for kind, target in args.export:
            written = export_benchmark(kind, result.rows, prompts, result.out_dir, target, command)
            print(f"{kind}: {len(written)} files in {target}")
            if kind == "hpsv2":
                counts = {style: sum(r.category == style for r in prompts) for style in HPSV2_STYLES}
                if any(n != 800 for n in counts.values()):
                    print("  note: HPSv2's benchmark score needs all 800 prompts of each style (this export has "
                          + ", ".join(f"{n} {style}" for style, n in counts.items())
                          + "); its evaluator substitutes a neighbouring image for a missing one")
    return 0


def register(sub: Any) -> None:
    ev = sub.add_parser("eval", help="generate and score image sets under several settings, with a report")
    ev.add_argument("--model", default="tiny-sd3", help=MODEL_HELP)
    ev.add_argument("--prompts", required=True, help=".txt (one per line), .csv or .jsonl (prompt, optional seed, style)")
    ev.add_argument("--seeds", type=parse_seeds, default=[0])
    ev.add_argument("--setting", action="append", default=[], metavar="'NAME: key=value, ...'",
                    help="a named setting, e.g. 'hh3: heads=L1H10,L13H17, pag_scale=1,3,5' (sweeps expand)")
    ev.add_argument("--settings-file", default=None, help="TOML or JSON: {name: {key: value or [sweep]}}")
    ev.add_argument("--metrics", action="append", default=[], help="scorer specs joined by commas")
    ev.add_argument("--baseline", default=None, metavar="NAME",
                    help="a setting to compare every other one with (paired differences, bootstrap over prompts)")
    ev.add_argument("--out", required=True, help="run directory (re-running reuses what still matches)")
    ev.add_argument("--export", nargs=2, action="append", default=[], metavar=("BENCHMARK", "DIR"),
                    help="also write the images in a benchmark's own layout for its evaluator: geneval, "
                         "t2i-compbench or hpsv2 (repeatable)")
    ev.add_argument("--fresh", action="store_true", help="remove this run's earlier images and results first")
    ev.add_argument("--batch-size", type=positive_int, default=4)
    ev.add_argument("--steps", type=positive_int, default=None)
    ev.add_argument("--size", type=parse_size, default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    ev.set_defaults(func=run)
