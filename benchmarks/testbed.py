"""Experiments on the trained toy-shapes model (``headhunter.testbed``), on held-out prompts and seeds.

0. Sample quality at the default settings: how often the ``shapes`` analysis finds the prompt's background,
   foreground colour, position, shape and style (200 held-out prompt–seed pairs).
a. Guidance methods, CFG off unless stated: none, CFG, layer-level PAG as diffusers applies it (every head of
   ``blocks.1``, identity), head-level SoftPAG on random heads, and on heads searched for ``shapes`` (on training
   prompts): the ``shapes`` score, the accuracies and a Fréchet distance to rendered ground truth in a fixed,
   weight-free feature space (4×4 average-pooled RGB, 48 dimensions).
b. A style search: heads searched for "warm light" with ``warmth`` and with ``shapes-style`` (prompts ending in
   ", warm light"), against random heads of the same count, on held-out content.
c. Cheaper strategies against greedy on the ``shapes`` ranking: halving (fewer pairs) and coarse (fewer steps):
   rank correlation of the full rankings, top-k overlap, and the ratio of transformer block evaluations.
d. The softness u and PAG scale w sweeps of the searched heads.

    python benchmarks/testbed.py            # full: 5 min on a 2-core CPU; writes benchmarks/results/testbed*.json/.md/.png
    python benchmarks/testbed.py --small    # a few pairs of each: the CI smoke run

Every table is measured in one run; "random heads" are drawn once with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from headhunter.scorers.shapes import analyse, components
from headhunter.search import HeadHunter
from headhunter.testbed.data import held_out_scenes, parse_prompt, render, training_scenes
from headhunter.testing import TOY_CALL, toy_pipeline

PARTS = ("background", "foreground", "position", "shape", "style")


def generate(pipe: Any, pairs: Sequence[tuple[str, int]], batch: int, **call: Any) -> np.ndarray:
    """uint8 [N, H, W, 3] images, one per (prompt, seed), each with its own generator."""
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        images = pipe([p for p, _ in chunk], generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                      output_type="np", **{**TOY_CALL, **call}).images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def accuracies(images: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of images whose analysis finds each part of the prompt, and the mean ``shapes`` score."""
    right = {part: 0 for part in PARTS}
    score = 0.0
    for image, prompt in zip(images, prompts):
        scene = parse_prompt(prompt)
        seen = analyse(image, scene.style)
        for part in PARTS:
            right[part] += getattr(seen, part) == getattr(scene, part)
        values = components(image, prompt)
        score += sum(values.values()) / len(values)
    n = len(prompts)
    return {"shapes": score / n, **{part: right[part] / n for part in PARTS}}


def features(images: np.ndarray) -> np.ndarray:
    """The fixed feature space of the Fréchet distance: 4×4 average-pooled RGB in [0, 1] (48 numbers)."""
    n, h, w, c = images.shape
    pooled = images.reshape(n, 4, h // 4, 4, w // 4, c).astype(np.float64).mean(axis=(2, 4)) / 255.0
    return pooled.reshape(n, -1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``:
    ``‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def ground_truth(pairs: Sequence[tuple[str, int]]) -> np.ndarray:
    return np.stack([np.asarray(render(prompt, 32, seed)) for prompt, seed in pairs])


def measure(pipe: Any, pairs: Sequence[tuple[str, int]], batch: int, reference: np.ndarray, **call: Any) -> dict:
    """Accuracies, ``shapes``, ``warmth`` and the Fréchet distance to ``reference`` of the images of ``pairs``."""
    from headhunter.scorers import load_scorer

    images = generate(pipe, pairs, batch, **call)
    prompts = [p for p, _ in pairs]
    warmth = load_scorer("warmth")(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, prompts)
    return {**accuracies(images, prompts), "warmth": warmth.mean().item(),
            "frechet": frechet(features(images), features(reference))}


def measure_speed(repeats: int) -> dict[str, float]:
    """Median seconds to load the shipped model, and per image at the default settings (batch 1), without guidance,
    with CFG and with head guidance, alternating."""
    loads = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe = toy_pipeline()
        loads.append(time.perf_counter() - start)
    prompt = held_out_scenes()[0].prompt
    calls = {"no guidance": dict(guidance_scale=1.0), "CFG 4": dict(guidance_scale=4.0),
             "4 heads, PAG 3": dict(guidance_scale=1.0, pag_heads="L0H1,L1H2,L2H3,L3H0", pag_scale=3.0)}
    times: dict[str, list[float]] = {name: [] for name in calls}
    generate(pipe, [(prompt, 0)], 1)  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            generate(pipe, [(prompt, 0)], 1, **call)
            times[name].append(time.perf_counter() - start)
    return {"load_s": statistics.median(loads), **{f"{name} s/image": statistics.median(t) for name, t in times.items()}}


def held_out_pairs(count: int, style: str | None = "any") -> list[tuple[str, int]]:
    """``count`` held-out prompts (all styles, or every content with ``style``) with seeds never trained on."""
    scenes = held_out_scenes()
    if style != "any":
        contents = list(dict.fromkeys(s.prompt.split(", ")[0] + ", " + s.position for s in scenes))
        prompts = [c if style is None else f"{c}, {style}" for c in contents]
    else:
        prompts = [s.prompt for s in scenes]
    return [(prompts[i % len(prompts)], 10_000 + i) for i in range(count)]


def training_prompts(count: int, style: str | None = None, seed: int = 0) -> list[str]:
    scenes = [s for s in training_scenes() if s.style == style]
    random.Random(seed).shuffle(scenes)
    return [s.prompt for s in scenes[:count]]


def search(pipe: Any, objective: str, prompts: list[str], seeds: list[int], top_k: int, run_dir: Path, args: Any,
           extra: dict | None = None, **options: Any) -> Any:
    """One greedy round (or ``options``' strategy) on the toy model; ``extra``: more pipeline arguments."""
    options = {"strategy": "greedy", **options}
    call = {k: v for k, v in TOY_CALL.items() if k != "num_inference_steps"}
    return HeadHunter(pipe, objective, prompts, seeds, top_k=top_k, rounds=1, run_dir=run_dir,
                      pag_scale=args.pag_scale, pag_softness=1.0, num_inference_steps=TOY_CALL["num_inference_steps"],
                      guidance_scale=1.0, batch_size=args.batch, progress=False,
                      extra_call_kwargs={**call, **(extra or {})}, **options).run()


def random_heads(pipe: Any, count: int, seed: int) -> str:
    layout = pipe.head_layout
    heads = [f"L{l}H{h}" for l in range(layout.num_layers) for h in range(layout.num_heads)]
    return ",".join(random.Random(seed).sample(heads, count))


def spearman(a: list[str], b: list[str]) -> float:
    """Spearman's ρ between two full rankings of the same items (no ties)."""
    n = len(a)
    rank_b = {item: i for i, item in enumerate(b)}
    d2 = sum((i - rank_b[item]) ** 2 for i, item in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def experiment_parser(description: str) -> argparse.ArgumentParser:
    """The options the toy models' experiment scripts share: pairs, search size, PAG scale, batch, output folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--small", action="store_true", help="a few pairs per experiment (CI)")
    parser.add_argument("--pairs", type=int, default=200, help="held-out prompt-seed pairs per setting")
    parser.add_argument("--search-prompts", type=int, default=16)
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--pag-scale", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser


def main() -> None:
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=float, default=4.0, help="the CFG scale of the CFG row")
    args = parser.parse_args()
    if args.small:
        args.pairs, args.search_prompts, args.search_seeds, args.batch = 8, 3, 1, 8
    started = time.perf_counter()
    speed = measure_speed(repeats=2 if args.small else 5)
    pipe = toy_pipeline()
    pairs = held_out_pairs(args.pairs)
    reference = ground_truth([(p, s + 50_000) for p, s in pairs])
    result: dict[str, Any] = {"benchmark": "testbed", "date": date.today().isoformat(),
                              "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                              "torch": torch.__version__, "settings": vars(args), "call": TOY_CALL, "speed": speed}

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    # 0 + a: guidance methods -------------------------------------------------------------------------------------
    seeds = list(range(args.search_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        found = search(pipe, "shapes", training_prompts(args.search_prompts), seeds, args.top_k, Path(tmp) / "a", args)
        log(f"searched for shapes: {found.selected}")
        greedy_rows = found.rounds[0].rows
        greedy_blocks = found.block_evaluations
        cheaper = {}
        strategies = {"halving (2 pairs first, keep ½)": {"strategy": "halving"},
                      "halving (1 pair first, keep ¼)": {"strategy": "halving", "halving_initial_pairs": 1,
                                                         "halving_keep": 0.25},
                      "coarse (every pair at 4 of 20 steps)": {"strategy": "coarse", "coarse_steps": 4},
                      "coarse (every pair at 2 of 20 steps)": {"strategy": "coarse", "coarse_steps": 2}}
        for i, (name, options) in enumerate(strategies.items()):
            cheaper[name] = search(pipe, "shapes", training_prompts(args.search_prompts), seeds, args.top_k,
                                   Path(tmp) / f"strategy-{i}", args, **options)
            log(f"{name}: {cheaper[name].selected}")
        style_found = {objective: search(pipe, objective, training_prompts(args.search_prompts, "warm light", 1), seeds,
                                         args.top_k, Path(tmp) / objective, args)
                       for objective in ("warmth", "shapes-style")}
        log("style searches done")
    searched = str(found.selected)
    chance = random_heads(pipe, args.top_k, seed=1)
    perturbed = dict(guidance_scale=1.0, pag_scale=args.pag_scale)
    methods = {
        "no guidance": dict(guidance_scale=1.0),
        f"CFG {args.cfg:g}": dict(guidance_scale=args.cfg),
        "layer PAG (blocks.1, every head, identity)": dict(perturbed, pag_heads="L1", pag_softness=1.0),
        f"SoftPAG, {args.top_k} random heads ({chance})": dict(perturbed, pag_heads=chance, pag_softness=1.0),
        f"SoftPAG, {args.top_k} searched heads ({searched})": dict(perturbed, pag_heads=searched, pag_softness=1.0),
    }
    result["methods"] = {}
    for name, call in methods.items():
        result["methods"][name] = measure(pipe, pairs, args.batch, reference, **call)
        log(f"{name}: {result['methods'][name]}")

    # b: style ------------------------------------------------------------------------------------------------------
    style_pairs = held_out_pairs(args.pairs, style="warm light")
    style_reference = ground_truth([(p, s + 50_000) for p, s in style_pairs])
    result["style"] = {"no guidance": measure(pipe, style_pairs, args.batch, style_reference, guidance_scale=1.0)}
    for objective, run in style_found.items():
        for label, heads in ((f"searched for {objective} ({run.selected})", str(run.selected)),
                             (f"random heads ({chance})", chance)):
            if label not in result["style"]:
                result["style"][label] = measure(pipe, style_pairs, args.batch, style_reference, **perturbed,
                                                 pag_heads=heads, pag_softness=1.0)
    log("style rows done")

    # c: halving against greedy ------------------------------------------------------------------------------------
    full = [row["head"] for row in greedy_rows]
    top = set(full[: args.top_k])
    result["halving"] = {"greedy": {"selected": searched, "block_evaluations": greedy_blocks}}
    for name, run in cheaper.items():
        order = [row["head"] for row in run.rounds[0].rows]
        result["halving"][name] = {
            "selected": str(run.selected), "block_evaluations": run.block_evaluations,
            "block_ratio": run.block_evaluations / greedy_blocks,
            "top_k_overlap": len(top & {str(h) for h in run.selected}) / args.top_k,
            "spearman": spearman(full, order),
        }

    # d: softness ---------------------------------------------------------------------------------------------------
    result["softness"] = {}
    for u in (0.0, 0.25, 0.5, 0.75, 1.0):
        result["softness"][f"{u:g}"] = measure(pipe, pairs, args.batch, reference, **perturbed, pag_heads=searched,
                                               pag_softness=u)
    result["scale"] = {}
    for w in (0.5, 1.0, 2.0, 3.0, 5.0):
        result["scale"][f"{w:g}"] = measure(pipe, pairs, args.batch, reference, guidance_scale=1.0, pag_scale=w,
                                            pag_heads=searched, pag_softness=1.0)
    log("softness and scale sweeps done")
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "testbed-small" if args.small else "testbed"
    sample_figure(pipe, pairs[:6], {"no guidance": methods["no guidance"], f"CFG {args.cfg:g}": methods[f"CFG {args.cfg:g}"],
                                    f"searched heads, PAG {args.pag_scale:g}": dict(perturbed, pag_heads=searched)},
                  out / f"{stem}-samples.png")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def sample_figure(pipe: Any, pairs: Sequence[tuple[str, int]], columns: dict[str, dict], path: Path,
                  scale: int = 4, truth: Any = None) -> None:
    """One row per pair: its ground-truth render (``truth(prompt, seed)``; default toy-shapes' render with another
    seed), then the image of each setting in ``columns``, enlarged pixel-exactly, with a header row of names and the
    prompt under each row."""
    from PIL import Image, ImageDraw

    truth = truth or (lambda prompt, seed: render(prompt, 32, seed + 50_000))
    cells = [[np.asarray(truth(p, s)) for p, s in pairs]]
    cells += [list(generate(pipe, pairs, len(pairs), **call)) for call in columns.values()]
    side, header, caption = 32 * scale, 18, 16
    names = ["rendered truth", *columns]
    width = max(len(names) * (side + 4), 7 * max(len(p) for p, _ in pairs))
    figure = Image.new("RGB", (width, header + len(pairs) * (side + caption + 4)), "white")
    draw = ImageDraw.Draw(figure)
    for c, name in enumerate(names):
        draw.text((c * (side + 4) + 2, 3), name, fill="black")
    for r, (prompt, _) in enumerate(pairs):
        top = header + r * (side + caption + 4)
        for c, column in enumerate(cells):
            tile = Image.fromarray(column[r]).resize((side, side), Image.NEAREST)
            figure.paste(tile, (c * (side + 4), top))
        draw.text((2, top + side + 2), prompt, fill="black")
    figure.save(path)


def _row(values: dict, keys: Sequence[str]) -> str:
    return " | ".join(f"{values[k]:.3f}" if k in ("shapes", "frechet", "warmth") else f"{100 * values[k]:.0f} %"
                      for k in keys)


def markdown(r: dict) -> str:
    s = r["settings"]
    keys = ("shapes", *PARTS, "frechet")
    head = "| " + " | ".join(keys) + " |"
    rule = "|---" * (len(keys) + 1) + "|"
    lines = [
        f"toy-shapes (SD3 architecture, 6 layers × 4 heads, 32×32), {r['call']['num_inference_steps']} steps; "
        f"{s['pairs']} held-out prompt–seed pairs per row; PAG scale {s['pag_scale']:g}; heads searched greedily "
        f"(1 round, top {s['top_k']}) on {s['search_prompts']} training prompts × {s['search_seeds']} seeds; "
        f"{r['device']}, torch {r['torch']}, {r['date']}; {r['seconds'] / 60:.0f} min in all.",
        "",
        f"Speed (medians): loading the model {r['speed']['load_s']:.2f} s; one image at "
        f"{r['call']['num_inference_steps']} steps: " + ", ".join(
            f"{k.removesuffix(' s/image')} {v:.2f} s" for k, v in r["speed"].items() if k != "load_s") + ".",
        "",
        "**(a) Guidance methods** (CFG off unless named)",
        "",
        "| method " + head,
        rule,
    ]
    lines += [f"| {name} | {_row(v, keys)} |" for name, v in r["methods"].items()]
    style_keys = ("warmth", "shapes", "style", "foreground", "frechet")
    lines += ["", "**(b) \"warm light\"**: prompts ending in \", warm light\", held-out contents", "",
              "| heads | " + " | ".join(style_keys) + " |", "|---" * (len(style_keys) + 1) + "|"]
    lines += [f"| {name} | {_row(v, style_keys)} |" for name, v in r["style"].items()]
    lines += ["", f"**(c) Cheaper strategies against greedy** on the `shapes` ranking (top {s['top_k']})", "",
              "| strategy | selected | block evaluations | vs greedy | top-k overlap | Spearman ρ |", "|---|---|---|---|---|---|"]
    for name, v in r["halving"].items():
        if name == "greedy":
            lines.append(f"| greedy | {v['selected']} | {v['block_evaluations']:.0f} | 100 % | — | — |")
        else:
            lines.append(f"| {name} | {v['selected']} | {v['block_evaluations']:.0f} | {100 * v['block_ratio']:.0f} % | "
                         f"{100 * v['top_k_overlap']:.0f} % | {v['spearman']:.2f} |")
    lines += ["", "**(d) Softness u** of the searched heads", "", "| u " + head, rule]
    lines += [f"| {u} | {_row(v, keys)} |" for u, v in r["softness"].items()]
    lines += ["", "**(d) PAG scale w** of the searched heads (u = 1)", "", "| w " + head, rule]
    lines += [f"| {w} | {_row(v, keys)} |" for w, v in r["scale"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
