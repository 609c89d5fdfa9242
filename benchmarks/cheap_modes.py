"""The cheap modes' trade-off on the trained toy-shapes model, on held-out prompts and seeds, CFG off and CFG on.

For each mode: transformer passes per step (rows the last block hands to ``norm_out``, per image and step, counted
in the run) and block-equivalent passes (block rows over the number of layers: prefix sharing shows here), the
wall-clock ratio to the exact mode (modes alternating, ``--repeats`` rounds, medians of one batch), the searched
objective's gain kept (``(m − m_none) / (m_exact − m_none)``), the five ``shapes`` accuracies and the ``shapes``
score, the Fréchet distance to the rendered truth (:mod:`testbed`'s 48-number feature space) and the mean absolute
pixel difference to the exact mode's images (8-bit).

Two objectives, each with the heads the testbed searched for it (``headhunter/presets/toy-shapes-*.json``):
``warmth`` (heads searched for warmth, on held-out "…, warm light" prompts) and ``shapes`` (heads searched for the
``shapes`` score, on every held-out prompt). CFG off: w = 3. CFG on: g = 4 and w = 3, so ``pag_mode="uncond"``
(weight g − 1 = 3) weighs its perturbation as the exact mode does.

The search: one greedy round on ``shapes`` (the testbed's training prompts and seeds) computed exactly, with
``pag_reuse=2`` and with the coarse strategy combined with it, against exact greedy: top-k overlap, Spearman's ρ of
the full rankings and the block evaluations counted by the engine.

    python benchmarks/cheap_modes.py            # 200 pairs per row: ~25 min on a 2-core CPU
    python benchmarks/cheap_modes.py --small    # a few pairs (smoke run)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from testbed import (PARTS, accuracies, features, frechet, generate, ground_truth, held_out_pairs, search, spearman,
                     training_prompts)

from headhunter.heads import HeadLayout, load_preset
from headhunter.scorers import load_scorer
from headhunter.testing import TOY_CALL, toy_pipeline

OBJECTIVES = {"warmth": ("toy-shapes-warm", "warm light"), "shapes": ("toy-shapes-fidelity", "any")}


def modes(cfg: bool) -> dict[str, dict]:
    """Mode name → the call's extra arguments (``None``: no head guidance at all)."""
    if not cfg:
        return {"no guidance": None, "exact": {}, "reuse 2": dict(pag_reuse=2), "reuse 3": dict(pag_reuse=3),
                "reuse 4": dict(pag_reuse=4), "first half only": dict(pag_interval=(0.0, 0.5)),
                "last half only": dict(pag_interval=(0.5, 1.0))}
    return {"CFG only": None, "exact": {}, "reuse 2": dict(pag_reuse=2), "reuse 4": dict(pag_reuse=4),
            "uncond (pag_mode)": dict(pag_mode="uncond")}


@contextmanager
def counting_rows(transformer: torch.nn.Module) -> Iterator[dict]:
    """Counts rows at ``norm_out`` (whole passes) and at every block (block evaluations) while inside."""
    layout = HeadLayout.from_transformer(transformer)
    counts = {"passes": 0, "blocks": 0}

    def block_rows(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        counts["blocks"] += x.shape[0]

    handles = [transformer.norm_out.register_forward_pre_hook(
        lambda m, args: counts.__setitem__("passes", counts["passes"] + args[0].shape[0]))]
    handles += [layout.block(transformer, n).register_forward_pre_hook(block_rows, with_kwargs=True)
                for n in range(layout.num_layers)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def run_setting(pipe: Any, pairs: list, heads: str, g: float, extra: dict | None, batch: int, w: float) -> tuple:
    call = dict(guidance_scale=g)
    if extra is not None:
        call.update(pag_heads=heads, pag_scale=w, pag_softness=1.0, **extra)
    layers = HeadLayout.from_transformer(pipe.transformer).num_layers
    with counting_rows(pipe.transformer) as counts:
        images = generate(pipe, pairs, batch, **call)
    per = len(pairs) * TOY_CALL["num_inference_steps"]
    return images, call, counts["passes"] / per, counts["blocks"] / layers / per


def measure_modes(pipe: Any, objective: str, cfg: bool, pairs: list, args: Any) -> dict:
    preset, _ = OBJECTIVES[objective]
    heads = str(load_preset(preset)["heads"])
    g = args.cfg if cfg else 1.0
    truth = ground_truth([(p, s + 50_000) for p, s in pairs])
    prompts = [p for p, _ in pairs]
    warmth = load_scorer("warmth")
    rows, images_of, calls = {}, {}, {}
    for name, extra in modes(cfg).items():
        images, call, passes, block_passes = run_setting(pipe, pairs, heads, g, extra, args.batch, args.pag_scale)
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        rows[name] = {**accuracies(images, prompts), "warmth": warmth(tensor, prompts).mean().item(),
                      "frechet": frechet(features(images), features(truth)), "passes_per_step": passes,
                      "block_passes_per_step": block_passes, "call": dict(call)}
        images_of[name], calls[name] = images, call
    baseline, exact = next(iter(rows)), "exact"
    for name, row in rows.items():
        row["pixel_diff_to_exact"] = float(np.abs(images_of[name].astype(np.int16)
                                                  - images_of[exact].astype(np.int16)).mean())
        span = rows[exact][objective] - rows[baseline][objective]
        row["gain_kept"] = (row[objective] - rows[baseline][objective]) / span if span else float("nan")
    timing_pairs = pairs[: args.batch]
    times: dict[str, list[float]] = {name: [] for name in calls}
    generate(pipe, timing_pairs, args.batch, **calls[exact])  # warm-up
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            generate(pipe, timing_pairs, args.batch, **call)
            times[name].append(time.perf_counter() - start)
    for name, row in rows.items():
        row["seconds_per_batch"] = statistics.median(times[name])
        row["time_vs_exact"] = row["seconds_per_batch"] / statistics.median(times[exact])
    return {"heads": heads, "guidance_scale": g, "pairs": len(pairs), "rows": rows}


def measure_search(pipe: Any, args: Any) -> dict:
    prompts, seeds = training_prompts(args.search_prompts), list(range(args.search_seeds))
    reuse = {"pag_reuse": 2}
    runs = {"exact greedy": {}, "greedy, pag_reuse=2": {"extra": reuse},
            "coarse (4 of 20 steps), pag_reuse=2": {"strategy": "coarse", "coarse_steps": 4, "extra": reuse},
            "coarse (4 of 20 steps), exact": {"strategy": "coarse", "coarse_steps": 4}}
    with tempfile.TemporaryDirectory() as tmp:
        done = {name: search(pipe, "shapes", prompts, seeds, args.top_k, Path(tmp) / str(i), args, **options)
                for i, (name, options) in enumerate(runs.items())}
    full = [row["head"] for row in done["exact greedy"].rounds[0].rows]
    top = set(full[: args.top_k])
    out = {}
    for name, run in done.items():
        order = [row["head"] for row in run.rounds[0].rows]
        out[name] = {"selected": str(run.selected), "block_evaluations": run.block_evaluations,
                     "block_ratio": run.block_evaluations / done["exact greedy"].block_evaluations,
                     "top_k_overlap": len(top & {str(h) for h in run.selected}) / args.top_k,
                     "spearman": spearman(full, order)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few pairs per row (smoke run)")
    parser.add_argument("--pairs", type=int, default=200, help="held-out prompt-seed pairs per row")
    parser.add_argument("--pag-scale", type=float, default=3.0)
    parser.add_argument("--cfg", type=float, default=4.0, help="the CFG scale of the CFG-on tables")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (modes alternate)")
    parser.add_argument("--search-prompts", type=int, default=16)
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.small:
        args.pairs, args.batch, args.repeats, args.search_prompts, args.search_seeds = 8, 8, 1, 3, 1
    started = time.perf_counter()
    pipe = toy_pipeline()
    pipe.set_progress_bar_config(disable=True)
    result: dict[str, Any] = {"benchmark": "cheap_modes", "date": date.today().isoformat(),
                              "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                              "torch": torch.__version__, "settings": vars(args), "call": TOY_CALL, "tables": {}}
    for objective, (_, style) in OBJECTIVES.items():
        pairs = held_out_pairs(args.pairs, style=style)
        for cfg in (False, True):
            key = f"{objective}, CFG {'on' if cfg else 'off'}"
            result["tables"][key] = measure_modes(pipe, objective, cfg, pairs, args)
            print(f"[{time.perf_counter() - started:6.0f} s] {key} done", flush=True)
    result["search"] = measure_search(pipe, args)
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cheap-modes-small" if args.small else "cheap-modes"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def mode_table(rows: dict, objective: str) -> list[str]:
    """Markdown lines of one table: a row per mode; the block-pass and timing columns where measured."""
    first = next(iter(rows.values()))
    columns = [("passes / step", lambda v: f"{v['passes_per_step']:.2f}")]
    if "block_passes_per_step" in first:
        columns.append(("block passes / step", lambda v: f"{v['block_passes_per_step']:.2f}"))
    if "time_vs_exact" in first:
        columns.append(("time vs exact", lambda v: f"{v['time_vs_exact']:.2f}"))
    columns += [(objective, lambda v: f"{v[objective]:.3f}"), ("gain kept", lambda v: f"{100 * v['gain_kept']:.0f} %"),
                ("pixel diff to exact", lambda v: f"{v['pixel_diff_to_exact']:.1f}")]
    if objective != "shapes":
        columns.append(("shapes", lambda v: f"{v['shapes']:.3f}"))
    columns += [(part, lambda v, part=part: f"{100 * v[part]:.0f} %") for part in PARTS]
    columns.append(("Fréchet", lambda v: f"{v['frechet']:.3f}"))
    lines = ["| mode | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(v) for _, cell in columns) + " |" for name, v in rows.items()]
    return lines


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"toy-shapes (SD3 architecture, 6 layers × 4 heads, 32×32), {r['call']['num_inference_steps']} steps, "
             f"PAG scale {s['pag_scale']:g}, CFG {s['cfg']:g} where on; {s['pairs']} held-out prompt–seed pairs per "
             f"row; timing: one batch of {s['batch']}, {s['repeats']} alternating rounds, medians; {r['device']}, "
             f"torch {r['torch']}, {r['date']}; {r['seconds'] / 60:.0f} min in all.", ""]
    for key, table in r["tables"].items():
        lines += [f"**{key}** — heads `{table['heads']}`", "", *mode_table(table["rows"], key.split(",")[0]), ""]
    lines += [f"**Search**: one greedy round on `shapes`, top {s['top_k']}, {s['search_prompts']} training prompts × "
              f"{s['search_seeds']} seeds", "",
              "| run | selected | block evaluations | vs exact greedy | top-k overlap | Spearman ρ |",
              "|---|---|---|---|---|---|"]
    for name, v in r["search"].items():
        lines.append(f"| {name} | {v['selected']} | {v['block_evaluations']:.0f} | {100 * v['block_ratio']:.0f} % | "
                     f"{100 * v['top_k_overlap']:.0f} % | {v['spearman']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
