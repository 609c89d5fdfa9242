"""HeadHunter search cost on a fixed random-weight SD3-style model (CPU by default).

1. Throughput of one full greedy round: the batched engine (per-sample head plans, `--batch-size` images per call,
   prefix sharing) against one image per pipeline call without prefix sharing (as the paper's script generates), and
   one image per call with prefix sharing. Alternating, `--repeats` rounds, medians.
2. Successive halving against greedy on the same round: transformer block evaluations, images, and how many of
   greedy's top k halving recovers, on the benchmark's objective.

    python benchmarks/search.py            # writes benchmarks/results/search-*.json and .md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from headhunter.search import HeadHunter
from headhunter.testing import build_pipeline, tiny_components


def make_pipe(args):
    from headhunter.pipelines import HeadHunterSD3Pipeline

    pipe = build_pipeline(HeadHunterSD3Pipeline, tiny_components("tiny-sd3", num_layers=args.layers, num_heads=args.heads))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def search(pipe, args, run_dir, **kw):
    prompts = ["a red fox in the snow", "an old lighthouse", "a bowl of oranges", "a city street at night"][: args.prompts]
    options = dict(top_k=args.top_k, rounds=1, num_inference_steps=args.steps, height=args.size, width=args.size,
                   guidance_scale=0.0, progress=False, extra_call_kwargs={"max_sequence_length": 32})
    options.update(kw)
    start = time.perf_counter()
    result = HeadHunter(pipe, args.objective, prompts, list(range(args.seeds)), run_dir=run_dir, **options).run()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--objective", default="colorfulness")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = make_pipe(args)

    variants = {
        "batched (per-sample plans, shared prefix)": dict(batch_size=args.batch_size, share=True),
        "one image per call, shared prefix": dict(batch_size=1, share=True),
        "one image per call, no prefix sharing (paper's script)": dict(batch_size=1, share=False),
    }
    seconds = {name: [] for name in variants}
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                v = variants[name]
                pipe.share_prefix = v["share"]
                result, secs = search(pipe, args, Path(tmp) / f"{r}-{len(seconds[name])}-{v['batch_size']}-{v['share']}",
                                      batch_size=v["batch_size"])
                pipe.share_prefix = True
                seconds[name].append(secs)
                images[name] = result.images_generated
                print(f"round {r + 1}/{args.repeats} {name}: {secs:.2f}s for {result.images_generated} images", flush=True)
        greedy, _ = search(pipe, args, Path(tmp) / "greedy", batch_size=args.batch_size)
        halving, _ = search(pipe, args, Path(tmp) / "halving", batch_size=args.batch_size, strategy="halving",
                            halving_initial_pairs=1, halving_keep=0.5)

    median = {k: statistics.median(v) for k, v in seconds.items()}
    throughput = {k: images[k] / median[k] for k in median}
    base = "one image per call, no prefix sharing (paper's script)"
    recovered = len(set(str(h) for h in halving.selected) & set(str(h) for h in greedy.selected))
    result = {
        "benchmark": "search", "date": date.today().isoformat(),
        "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "settings": vars(args), "median_seconds": median, "all_seconds": seconds, "images_per_round": images,
        "images_per_second": throughput,
        "speedup_vs_paper_script": {k: throughput[k] / throughput[base] for k in throughput},
        "greedy": {"selected": str(greedy.selected), "images": greedy.images_generated,
                   "block_evaluations": greedy.block_evaluations},
        "halving": {"selected": str(halving.selected), "images": halving.images_generated,
                    "block_evaluations": halving.block_evaluations},
        "block_evaluation_ratio_greedy_over_halving": greedy.block_evaluations / halving.block_evaluations,
        "halving_recovers_of_greedy_top_k": f"{recovered}/{args.top_k}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"search-cpu-{args.layers}l{args.heads}h-{args.size}px"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    print(md)


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"Random-weight SD3-style transformer, {s['layers']} layers × {s['heads']} heads ({s['layers'] * s['heads']} "
        f"candidates), {s['size']}×{s['size']}, {s['steps']} steps, {s['prompts']} prompts × {s['seeds']} seeds, objective "
        f"{s['objective']}; {r['device']}, torch {r['torch']}, {r['date']}; medians of {s['repeats']} alternating runs.",
        "",
        "| one full greedy round | images | median s | images/s | vs paper's script |",
        "|---|---|---|---|---|",
    ]
    for name, secs in r["median_seconds"].items():
        lines.append(f"| {name} | {r['images_per_round'][name]} | {secs:.2f} | {r['images_per_second'][name]:.1f} | "
                     f"{r['speedup_vs_paper_script'][name]:.2f}× |")
    g, h = r["greedy"], r["halving"]
    lines += [
        "",
        "| strategy (top k = %d) | images | block evaluations | selected |" % s["top_k"],
        "|---|---|---|---|",
        f"| greedy | {g['images']} | {g['block_evaluations']:.0f} | {g['selected']} |",
        f"| halving (1 pair first, keep ½, double pairs) | {h['images']} | {h['block_evaluations']:.0f} | {h['selected']} |",
        "",
        f"halving uses {r['block_evaluation_ratio_greedy_over_halving']:.2f}× fewer block evaluations and recovers "
        f"{r['halving_recovers_of_greedy_top_k']} of greedy's top {s['top_k']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
