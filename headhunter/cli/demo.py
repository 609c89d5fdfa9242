"""``headhunter demo``: every part of headhunter once, on the tiny offline model."""

from __future__ import annotations

import argparse
from typing import Any

from .common import check_writable_dir
from .generate import generate_images

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    """On the tiny SD3 model: guided against unguided images, a short HeadHunter search with a weight-free objective,
    the objective with the found heads against no guidance, and a small evaluation with its report."""
    import numpy as np
    import torch
    from PIL import Image

    from headhunter.metadata import save_png
    from headhunter.pipelines import load_pipeline
    from headhunter.scorers import load_scorer
    from headhunter.search import HeadHunter

    out = check_writable_dir(args.out, "--out")
    pipe = load_pipeline("tiny-sd3", "cpu", "float32")
    print("headhunter demo on a tiny random-weight SD3 (images are noise; every code path is the real one)")

    # 1. guided vs unguided
    heads = "L0H1,L1H2,L2H0@0.5"
    base = {"model": "tiny-sd3", "width": 32, "height": 32, "num_inference_steps": 4, "guidance_scale": 1.0,
            "negative_prompt": None, "pag_scale": 3.0, "pag_softness": 1.0, "pag_target": "identity",
            "pag_scope": "joint", "pag_interval": [0.0, 1.0]}
    written, changes = [], []
    for i, prompt in enumerate(["a lighthouse at dusk", "a bowl of ripe oranges"]):
        pair = []
        for label, spec in (("unguided", None), ("guided", heads)):
            settings = {**base, "pag_heads": spec}
            image = generate_images(pipe, settings, prompt, [i])[0]
            written.append(save_png(image, out / f"{i}-{label}.png", {**settings, "prompt": prompt, "seed": i}))
            pair.append(image)
        changes.append(np.abs(np.asarray(pair[0], float) - np.asarray(pair[1], float)).mean())
        strip = Image.new("RGB", (pair[0].width * 2 + 4, pair[0].height), "white")
        strip.paste(pair[0], (0, 0))
        strip.paste(pair[1], (pair[0].width + 4, 0))
        written.append(save_png(strip.resize((strip.width * 4, strip.height * 4), Image.NEAREST),
                                out / f"{i}-compare.png", {"left": "unguided", "right": f"guided {heads}", "prompt": prompt}))
    print(f"1. guidance on {heads}: mean absolute pixel change {', '.join(f'{c:.1f}' for c in changes)} (of 255)")

    # 2. a short search for colorful images
    objective, prompts, seeds = "colorfulness", ["a parrot", "a market stall"], [0, 1]
    gen = dict(num_inference_steps=2, height=32, width=32, guidance_scale=0.0)
    result = HeadHunter(pipe, objective, prompts, seeds, top_k=2, rounds=1, run_dir=out / "search", pag_scale=3.0,
                        batch_size=8, progress=False, model_name="tiny-sd3", **gen).run()
    print(f"2. HeadHunter search ({objective}, {len(prompts)} prompts x {len(seeds)} seeds, "
          f"{result.images_generated} images): selected {result.selected}")

    # 3. the found heads against no guidance, same prompts and seeds
    scorer = load_scorer(objective)
    means = {}
    for label, spec in (("no guidance", None), (f"heads {result.selected}", result.selected)):
        values = []
        for prompt in prompts:
            images = pipe([prompt] * len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                          pag_heads=spec, pag_scale=3.0, output_type="pt", **gen).images
            values += scorer(images, [prompt] * len(seeds)).tolist()
        means[label] = sum(values) / len(values)
    (unguided, u), (guided, g) = means.items()
    verdict = "rose" if g > u else "did not rise"
    print(f"3. mean {objective}: {unguided} {u:.2f} -> {guided} {g:.2f} ({verdict})")

    # 4. a small evaluation with a report
    from headhunter.evaluate import Evaluation, Setting

    settings = [Setting("no-guidance", {}), Setting("searched-heads", {"pag_heads": str(result.selected), "pag_scale": 3.0})]
    evaluation = Evaluation(pipe, prompts, seeds, settings, ["colorfulness", "sharpness"], out / "eval",
                            defaults=gen, model_name="tiny-sd3", progress=False,
                            commands=[f"headhunter demo --out {out}"]).run()
    for row in evaluation.summary:
        print(f"4. eval {row['setting']:<15} {row['metric']:<12} {row['mean']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]")
    print(f"report: {evaluation.report}")
    print(f"files in {out}:")
    for path in written + [out / "search" / "selected.json", out / "search" / "heatmaps" / "round-0.png", evaluation.report]:
        print(f"  {path}")
    return 0



def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="guided vs unguided images, a search and an evaluation on the tiny offline model")
    demo.add_argument("--out", default="demo-output", help="folder for the images (default: demo-output)")
    demo.set_defaults(func=run)
