"""``headhunter demo``: every part of headhunter once, on the trained toy-shapes model (offline, CPU, seconds)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import check_writable_dir
from .generate import generate_images

__all__ = ["register"]

DEMO_SCALE = 3.0  # PAG scale of the demo's guidance
DEMO_PAIRS = 16  # held-out prompts the found heads are measured on


def run(args: argparse.Namespace) -> int:
    """On the trained toy-shapes model: a short HeadHunter style search (heads that make "warm light" warmer, by the
    weight-free ``warmth`` objective) on training prompts, guided against unguided images of held-out prompts, the
    objective with the found heads against no guidance, and a small evaluation with its report."""
    import torch
    from PIL import Image

    from headhunter.metadata import save_png
    from headhunter.pipelines import load_pipeline
    from headhunter.pipelines.loading import builtin_defaults
    from headhunter.scorers import load_scorer
    from headhunter.search import HeadHunter
    from headhunter.testbed.data import held_out_scenes, training_scenes

    out = check_writable_dir(args.out, "--out")
    model = "toy-shapes"
    defaults = builtin_defaults(model)
    pipe = load_pipeline(model, "cpu", "float32")
    print(f"headhunter demo on {model}: a small SD3-architecture model trained offline on coloured shapes (32×32), "
          "prompts 'a {colour} {shape} on a {colour} background, {position}[, {style}]'")
    search_gen = dict(num_inference_steps=defaults.steps, height=defaults.size, width=defaults.size, guidance_scale=1.0)
    gen = {**search_gen, **defaults.call}

    # 1. a short style search: the heads whose guidance makes "warm light" warmer, on prompts the model was trained on
    objective, seeds, style = "warmth", [0], "warm light"
    prompts = [scene.prompt for scene in training_scenes() if scene.style == style][::60]
    result = HeadHunter(pipe, objective, prompts, seeds, top_k=2, rounds=1, run_dir=out / "search", pag_scale=DEMO_SCALE,
                        batch_size=24, progress=False, model_name=model, extra_call_kwargs=defaults.call,
                        **search_gen).run()
    print(f"1. HeadHunter search ({objective}, {len(prompts)} training prompts x {len(seeds)} seed, "
          f"{result.images_generated} images): selected {result.selected}")

    # 2. guided vs unguided, on prompts the model never saw
    heads = str(result.selected)
    held_out = [scene.prompt for scene in held_out_scenes() if scene.style == style][:DEMO_PAIRS]
    base = {"model": model, "negative_prompt": None, "pag_scale": DEMO_SCALE, "pag_softness": 1.0,
            "pag_target": "identity", "pag_scope": "joint", "pag_interval": [0.0, 1.0], **gen}
    written = []
    for i, prompt in enumerate(held_out[:2]):
        pair = []
        for label, spec in (("unguided", None), ("guided", heads)):
            settings = {**base, "pag_heads": spec}
            image = generate_images(pipe, settings, prompt, [i]).images[0]
            written.append(save_png(image, out / f"{i}-{label}.png", {**settings, "prompt": prompt, "seed": i}))
            pair.append(image)
        strip = Image.new("RGB", (pair[0].width * 2 + 4, pair[0].height), "white")
        strip.paste(pair[0], (0, 0))
        strip.paste(pair[1], (pair[0].width + 4, 0))
        written.append(save_png(strip.resize((strip.width * 8, strip.height * 8), Image.NEAREST),
                                out / f"{i}-compare.png", {"left": "unguided", "right": f"guided {heads}", "prompt": prompt}))
    print(f"2. unguided | guided on {heads}, held-out prompts: {', '.join(repr(p) for p in held_out[:2])}")

    # 3. the found heads against no guidance, on held-out prompts and new seeds
    scorer = load_scorer(objective)
    means = {}
    for label, spec in (("no guidance", None), (f"heads {heads}", heads)):
        images = pipe(held_out, generator=[torch.Generator().manual_seed(1000 + i) for i in range(len(held_out))],
                      pag_heads=spec, pag_scale=DEMO_SCALE, output_type="pt", **gen).images
        means[label] = scorer(images, held_out).mean().item()
    (unguided, u), (guided, g) = means.items()
    verdict = "rose" if g > u else "did not rise"
    print(f"3. mean {objective} on {len(held_out)} held-out prompts: {unguided} {u:.3f} -> {guided} {g:.3f} ({verdict})")

    # 4. a small evaluation with a report
    from headhunter.evaluate import Evaluation, Setting

    settings = [Setting("no-guidance", {}), Setting("searched-heads", {"pag_heads": heads, "pag_scale": DEMO_SCALE})]
    evaluation = Evaluation(pipe, held_out[:4], [0, 1], settings, ["warmth", "shapes", "shapes-style"],
                            out / "eval", defaults=gen, model_name=model, progress=False,
                            commands=[f"headhunter demo --out {out}"]).run()
    for row in evaluation.summary:
        print(f"4. eval {row['setting']:<15} {row['metric']:<18} {row['mean']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]")
    print(f"report: {evaluation.report}")
    print(f"files in {out}:")
    for path in written + [out / "search" / "selected.json", out / "search" / "heatmaps" / "round-0.png", evaluation.report]:
        print(f"  {path}")
    return 0


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a style search, guided vs unguided images and an evaluation on the trained toy-shapes model")
    demo.add_argument("--out", default="demo-output", help="folder for the images (default: demo-output)")
    demo.set_defaults(func=run)
