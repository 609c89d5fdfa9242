"""``headhunter search``: HeadHunter; under ``accelerate launch`` / torchrun every process takes a share."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (MODEL_HELP, UsageError, check_writable_dir, import_modules, non_negative_float, parse_option,
                     parse_seeds, parse_size, positive_int, read_prompt_list, run_target)

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    from headhunter.arguments import check_image_size
    from headhunter.attention import check_target_scope
    from headhunter.pipelines import load_pipeline
    from headhunter.scorers import ScorerUnavailable
    from headhunter.scorers.base import parse_spec
    from headhunter.search import HeadHunter

    import_modules(args.imports)
    prompts = read_prompt_list(args.prompt, args.prompt_file, args.style)
    parse_spec(args.objective)  # a bad spec fails before any model loads
    check_target_scope(args.target, args.scope)
    if not 0 <= args.softness <= 1:
        raise UsageError(f"--softness {args.softness} must be in [0, 1]")
    if not 0 < args.halving_keep < 1:
        raise UsageError(f"--halving-keep {args.halving_keep} must be between 0 and 1")
    check_writable_dir(args.run_dir, "--run-dir")
    device, family, builtin, width, height = run_target(args)
    pipe = load_pipeline(args.model, device, args.dtype, False)
    check_image_size(pipe, height, width)
    pipe.set_progress_bar_config(disable=True)
    extra = dict(builtin.call) if builtin else {}
    if args.pag_reuse != 1:  # part of the run's config: a run made with another reuse is not resumed with this one
        extra["pag_reuse"] = args.pag_reuse
    try:
        hunter = HeadHunter(
            pipe, args.objective, prompts, args.seeds, args.top_k, args.rounds, args.run_dir,
            candidates=args.candidates, pag_scale=args.pag_scale, pag_softness=args.softness, pag_target=args.target,
            pag_scope=args.scope, num_inference_steps=args.steps or (builtin.steps if builtin else 20), height=height, width=width,
            guidance_scale=args.cfg, strategy=args.strategy, batch_size=args.batch_size,
            halving_initial_pairs=args.halving_initial_pairs, halving_keep=args.halving_keep,
            coarse_steps=args.coarse_steps,
            save_images=args.save_images, model_name=args.model, scorer_options=dict(args.option),
            extra_call_kwargs=extra,
        )
        result = hunter.run()
    except ScorerUnavailable as err:
        raise UsageError(str(err)) from None
    if hunter.rank == 0:
        for table in result.rounds:
            print(f"round {table.round + 1}: selected {', '.join(table.selected)} "
                  f"({table.images_generated} images, {table.block_evaluations:.0f} block evaluations)")
        print(f"selected heads: {result.selected}")
        print(f"images generated: {result.images_generated}, transformer block evaluations: {result.block_evaluations:.0f}")
        if result.failed:
            print(f"the objective failed (NaN) for: {', '.join(result.failed)} (ranked last)")
        print(f"run directory: {result.run_dir} (selected.json is a preset: --heads {result.run_dir}/selected.json)")
    return 0


def register(sub: Any) -> None:
    search = sub.add_parser("search", help="HeadHunter search for the heads that serve an objective")
    search.add_argument("--model", default="tiny-sd3", help=MODEL_HELP)
    search.add_argument("--objective", required=True, help="scorer spec, e.g. pickscore or 'style:golden hour'")
    search.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    search.add_argument("--prompt-file", default=None, help="one prompt per line")
    search.add_argument("--style", default=None, help="prefix every prompt as 'STYLE, prompt' (the paper's style search)")
    search.add_argument("--seeds", type=parse_seeds, default=[0], help="seeds joined by commas; every prompt × every seed")
    search.add_argument("--top-k", type=positive_int, default=3, help="heads added per round (k)")
    search.add_argument("--rounds", type=positive_int, default=1, help="rounds (R)")
    search.add_argument("--candidates", default=None, help="heads to search, e.g. L0-11 (default: all)")
    search.add_argument("--strategy", default="greedy", choices=("greedy", "halving", "coarse"),
                        help="greedy (Algorithm 1), halving, or coarse (greedy at --coarse-steps)")
    search.add_argument("--coarse-steps", type=positive_int, default=None,
                        help="the coarse strategy's denoising steps (default: a fifth of --steps, at least 2)")
    search.add_argument("--halving-initial-pairs", type=positive_int, default=2)
    search.add_argument("--halving-keep", type=float, default=0.5)
    search.add_argument("--batch-size", type=positive_int, default=8, help="images per pipeline call")
    search.add_argument("--pag-scale", type=non_negative_float, default=3.0)
    search.add_argument("--pag-reuse", type=positive_int, default=1,
                        help="score each candidate with the perturbed pass on every k-th step (default 1: exact; 2 "
                             "kept the ranking on toy-shapes, see the README's cheap modes)")
    search.add_argument("--softness", type=float, default=1.0)
    search.add_argument("--target", default="identity")
    search.add_argument("--scope", default="joint")
    search.add_argument("--steps", type=positive_int, default=None, help="default 20 (2 for tiny models)")
    search.add_argument("--size", type=parse_size, default=None)
    search.add_argument("--cfg", type=non_negative_float, default=None,
                        help="SD3 guidance_scale (default 0: CFG off, as the paper)")
    search.add_argument("--run-dir", required=True, help="run directory; the same one with the same settings resumes")
    search.add_argument("--save-images", action="store_true")
    search.add_argument("--device", default=None)
    search.add_argument("--dtype", default="auto")
    search.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="scorer option, e.g. local_files_only=true")
    search.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (objectives registered with register_scorer)")
    search.set_defaults(func=run)
