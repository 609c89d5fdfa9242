"""Experiments on the trained toy-scenes model (``headhunter.testbed.scenes``): does guidance repair held-out samples
that are poor without it, and do searched heads do it better than whole layers or random heads?

Every row is measured on the same held-out prompt–seed pairs (scenes and seeds never trained on), with 95 %
bootstrap intervals (2000 resamples of the pairs; for a difference, of the pairs' paired differences; for the
Fréchet distance, ± 1.96 bootstrap standard deviations):

a. CFG off and CFG at several scales: prompt adherence (both objects in their colours, the relation right), the
   ``scenes`` score (mean of background, both colours, both shapes, relation, style) and the Fréchet distance to the
   rendered truth of the same prompts (4×4 average-pooled RGB features, :mod:`testbed`).
b. Layer PAG (every head of one layer, identity), each layer; SoftPAG on random heads (two draws); heads searched
   for ``scenes`` on training prompts, greedy and coarse (every pair at 4 of 20 steps), with CFG off and with the
   best CFG scale of (a), each used with the CFG setting it was searched under.
c. The softness u and the PAG scale w of the greedy heads (CFG off).

    python benchmarks/testbed_scenes.py            # full: writes benchmarks/results/testbed-scenes.{json,md,png}
    python benchmarks/testbed_scenes.py --small    # a few pairs of each: a smoke run
"""

from __future__ import annotations

import json
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from testbed import experiment_parser, features, frechet, generate, random_heads, sample_figure

from headhunter.scorers.scenes import COMPONENTS, scene_components
from headhunter.search import HeadHunter
from headhunter.testbed.scenes import held_out_two_object_scenes, render_scene, training_two_object_scenes
from headhunter.testing import TOY_CALL, toy_pipeline

MODEL = "toy-scenes"
PER_IMAGE = ("adherence", "scenes", *COMPONENTS)


def held_out_pairs(count: int) -> list[tuple[str, int]]:
    """``count`` held-out prompts with seeds never trained on (the trainer renders seeds 0 and 1)."""
    scenes = held_out_two_object_scenes()
    return [(scenes[i % len(scenes)].prompt, 10_000 + i) for i in range(count)]


def training_prompts(count: int, seed: int = 0) -> list[str]:
    scenes = training_two_object_scenes()
    random.Random(seed).shuffle(scenes)
    return [s.prompt for s in scenes[:count]]


def truth(pairs: Sequence[tuple[str, int]]) -> np.ndarray:
    """The rendered truth of the pairs' prompts, with other seeds than the pairs' (another draw of the same scenes)."""
    return np.stack([np.asarray(render_scene(p, 32, s + 50_000)) for p, s in pairs])


def per_image(images: np.ndarray, pairs: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Each image's adherence, ``scenes`` score and components (0 or 1, the score their mean)."""
    rows = [scene_components(image, prompt) for image, (prompt, _) in zip(images, pairs)]
    values = {key: np.array([row[key] for row in rows]) for key in ("adherence", *COMPONENTS)}
    values["scenes"] = np.mean([values[c] for c in COMPONENTS], axis=0)
    return values


def interval(values: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values``."""
    index = rng.integers(0, len(values), (resamples, len(values)))
    means = values[index].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def frechet_interval(images: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
                     resamples: int = 200) -> tuple[float, float]:
    """95 % normal bootstrap interval of the Fréchet distance ``d``: ``d ± 1.96·s``, ``s`` the standard deviation of
    ``d`` over resamples of the images (the reference fixed). Resampling with replacement repeats images, which
    shrinks their covariance and biases every resampled distance upwards, so the resamples' spread is used and not
    their percentiles (whose interval need not contain ``d``)."""
    a, b = features(images), features(reference)
    distance = frechet(a, b)
    spread = float(np.std([frechet(a[rng.integers(0, len(a), len(a))], b) for _ in range(resamples)]))
    return max(0.0, distance - 1.96 * spread), distance + 1.96 * spread


class Bench:
    """The held-out pairs, their truth, and every measured setting's per-image values (for paired comparisons)."""

    def __init__(self, pipe: Any, pairs: list[tuple[str, int]], batch: int):
        self.pipe, self.pairs, self.batch = pipe, pairs, batch
        self.reference = truth(pairs)
        self.values: dict[str, dict[str, np.ndarray]] = {}
        self.rows: dict[str, dict] = {}
        self.rng = np.random.default_rng(0)

    def measure(self, name: str, **call: Any) -> dict:
        images = generate(self.pipe, self.pairs, self.batch, **call)
        values = per_image(images, self.pairs)
        self.values[name] = values
        row = {"call": {k: v for k, v in call.items()}}
        for key in PER_IMAGE:
            row[key] = float(values[key].mean())
        for key in ("adherence", "scenes"):
            row[f"{key}_ci"] = interval(values[key], self.rng)
        row["frechet"] = frechet(features(images), features(self.reference))
        row["frechet_ci"] = frechet_interval(images, self.reference, self.rng)
        self.rows[name] = row
        return row

    def difference(self, a: str, b: str, key: str = "adherence") -> dict:
        """Paired difference ``a − b`` of ``key`` over the same pairs, with its interval."""
        diff = self.values[a][key] - self.values[b][key]
        return {"a": a, "b": b, "metric": key, "diff": float(diff.mean()), "ci": interval(diff, self.rng)}


def search(pipe: Any, prompts: list[str], seeds: list[int], top_k: int, run_dir: Path, args: Any,
           guidance_scale: float, **options: Any) -> Any:
    """One round of HeadHunter for ``scenes`` on the toy model (greedy unless ``options`` say otherwise)."""
    call = {k: v for k, v in TOY_CALL.items() if k != "num_inference_steps"}
    return HeadHunter(pipe, "scenes", prompts, seeds, top_k=top_k, rounds=1, run_dir=run_dir,
                      pag_scale=args.pag_scale, pag_softness=1.0, num_inference_steps=TOY_CALL["num_inference_steps"],
                      guidance_scale=guidance_scale, batch_size=args.batch, progress=False, extra_call_kwargs=call,
                      **options).run()


def main() -> None:
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="1.5,2,3,5", help="the CFG scales of (a)")
    args = parser.parse_args()
    if args.small:
        args.pairs, args.search_prompts, args.search_seeds, args.batch = 8, 3, 1, 8
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    pipe = toy_pipeline(MODEL)
    layout = pipe.head_layout
    bench = Bench(pipe, held_out_pairs(args.pairs), args.batch)
    result: dict[str, Any] = {"benchmark": "testbed-scenes", "date": date.today().isoformat(),
                              "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                              "torch": torch.__version__, "settings": vars(args), "call": TOY_CALL}

    # a: CFG ----------------------------------------------------------------------------------------------------------
    bench.measure("no guidance", guidance_scale=1.0)
    cfg_names = {}
    for scale in (float(s) for s in args.cfg.split(",")):
        cfg_names[scale] = f"CFG {scale:g}"
        bench.measure(cfg_names[scale], guidance_scale=scale)
    best_cfg = max(cfg_names, key=lambda s: bench.rows[cfg_names[s]]["adherence"])
    log(f"CFG done; best scale {best_cfg:g}")

    # b: layers, random heads, searched heads -------------------------------------------------------------------------
    perturbed = dict(guidance_scale=1.0, pag_scale=args.pag_scale, pag_softness=1.0)
    for layer in range(layout.num_layers):
        bench.measure(f"layer PAG L{layer}", **perturbed, pag_heads=f"L{layer}")
    best_layer = max((f"layer PAG L{layer}" for layer in range(layout.num_layers)),
                     key=lambda name: bench.rows[name]["adherence"])
    chance = [random_heads(pipe, args.top_k, seed=seed) for seed in (1, 2)]
    for heads in chance:
        bench.measure(f"random heads {heads}", **perturbed, pag_heads=heads)
    log("layers and random heads done")
    prompts, seeds = training_prompts(args.search_prompts), list(range(args.search_seeds))
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in (1.0, best_cfg):
            for strategy, options in (("greedy", {}), ("coarse", {"strategy": "coarse", "coarse_steps": 4})):
                run = search(pipe, prompts, seeds, args.top_k, Path(tmp) / f"{strategy}-{cfg:g}", args, cfg, **options)
                found[(strategy, cfg)] = {"heads": str(run.selected), "block_evaluations": run.block_evaluations}
                name = f"{strategy} heads {run.selected}" + (f" + CFG {cfg:g}" if cfg > 1 else "")
                bench.measure(name, **{**perturbed, "guidance_scale": cfg}, pag_heads=str(run.selected))
                found[(strategy, cfg)]["row"] = name
                log(f"{name}: searched and measured")
    result["searches"] = {f"{s}, CFG {c:g}": v for (s, c), v in found.items()}
    greedy = found[("greedy", 1.0)]["heads"]

    # comparisons, paired over the same pairs
    greedy_row, coarse_row = found[("greedy", 1.0)]["row"], found[("coarse", 1.0)]["row"]
    greedy_cfg_row = found[("greedy", best_cfg)]["row"]
    result["comparisons"] = [
        bench.difference(greedy_row, "no guidance"),
        bench.difference(greedy_row, best_layer),
        *(bench.difference(greedy_row, f"random heads {heads}") for heads in chance),
        bench.difference(coarse_row, best_layer),
        bench.difference(best_layer, "no guidance"),
        bench.difference(cfg_names[best_cfg], "no guidance"),
        bench.difference(greedy_cfg_row, cfg_names[best_cfg]),
    ]

    # c: u and w ------------------------------------------------------------------------------------------------------
    for u in (0.0, 0.25, 0.5, 0.75):
        bench.measure(f"greedy heads, u {u:g}", **{**perturbed, "pag_softness": u}, pag_heads=greedy)
    for w in (1.0, 2.0, 5.0, 8.0):
        bench.measure(f"greedy heads, w {w:g}", **{**perturbed, "pag_scale": w}, pag_heads=greedy)
    log("u and w sweeps done")

    result.update(rows=bench.rows, best_cfg=best_cfg, best_layer=best_layer, seconds=time.perf_counter() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "testbed-scenes-small" if args.small else "testbed-scenes"
    columns = {"no guidance": dict(guidance_scale=1.0), cfg_names[best_cfg]: dict(guidance_scale=best_cfg),
               best_layer: bench.rows[best_layer]["call"], "greedy heads": bench.rows[greedy_row]["call"]}
    sample_figure(pipe, bench.pairs[:8], columns, out / f"{stem}-samples.png",
                  truth=lambda prompt, seed: render_scene(prompt, 32, seed + 50_000))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def _percent(value: float, ci: Sequence[float] | None = None) -> str:
    text = f"{100 * value:.1f} %"
    return text if ci is None else f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"toy-scenes (SD3 architecture, 6 layers × 4 heads, 32×32), {r['call']['num_inference_steps']} steps; "
        f"{s['pairs']} held-out prompt–seed pairs per row, 95 % bootstrap intervals in brackets; PAG scale "
        f"{s['pag_scale']:g} unless named; heads searched for `scenes` (1 round, top {s['top_k']}) on "
        f"{s['search_prompts']} training prompts × {s['search_seeds']} seeds; {r['device']}, torch {r['torch']}, "
        f"{r['date']}; {r['seconds'] / 60:.0f} min in all.",
        "",
        "| setting | adherence | scenes | " + " | ".join(COMPONENTS) + " | Fréchet to renders |",
        "|---" * (4 + len(COMPONENTS)) + "|",
    ]
    for name, v in r["rows"].items():
        lines.append(f"| {name} | {_percent(v['adherence'], v['adherence_ci'])} | "
                     f"{v['scenes']:.3f} [{v['scenes_ci'][0]:.3f}, {v['scenes_ci'][1]:.3f}] | "
                     + " | ".join(f"{100 * v[c]:.0f} %" for c in COMPONENTS)
                     + f" | {v['frechet']:.4f} [{v['frechet_ci'][0]:.4f}, {v['frechet_ci'][1]:.4f}] |")
    lines += ["", f"Best CFG scale: {r['best_cfg']:g}. Best layer: {r['best_layer']}.", "",
              "**Paired differences in adherence** (same pairs; 95 % bootstrap interval)", "",
              "| comparison | difference |", "|---|---|"]
    lines += [f"| {c['a']} − {c['b']} | {100 * c['diff']:+.1f} points [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] |"
              for c in r["comparisons"]]
    lines += ["", "**Searches** (block evaluations: transformer blocks run, the search's cost)", "",
              "| search | heads | block evaluations |", "|---|---|---|"]
    lines += [f"| {name} | {v['heads']} | {v['block_evaluations']:.0f} |" for name, v in r["searches"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
