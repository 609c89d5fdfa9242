"""The ``headhunter`` command line: ``generate``, ``search``, ``eval``, ``score``, ``ui``, ``bench`` and ``demo``.

Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["load_pipeline", "main"]

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16",
          "bf16": "bfloat16"}


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(name: str, device: str, family: str) -> Any:
    import torch

    if name == "auto":
        if device.startswith("cpu"):
            return torch.float32
        return torch.bfloat16 if family == "flux" else torch.float16
    if name not in DTYPES:
        raise UsageError(f"unknown --dtype {name!r}; choose auto, float32, float16 or bfloat16")
    return getattr(torch, DTYPES[name])


def model_family(model: str) -> str:
    """``"sd3"`` or ``"flux"`` for a tiny model name, a local pipeline folder or a hub id (read from its
    model_index.json; needs the hub or the local cache)."""
    from headhunter.testing import TINY_MODELS

    if model.lower() in TINY_MODELS:
        return "flux" if "flux" in model.lower() else "sd3"
    index = Path(model) / "model_index.json"
    try:
        if index.is_file():
            class_name = json.loads(index.read_text()).get("_class_name", "")
        else:
            from diffusers import DiffusionPipeline

            class_name = DiffusionPipeline.load_config(model).get("_class_name", "")
    except Exception as err:  # hub errors come in many classes; the user needs one line
        raise UsageError(
            f"cannot read model {model!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "Pass a local pipeline folder, or a hub id that is cached or reachable (unset HF_HUB_OFFLINE)."
        ) from None
    if "Flux" in class_name:
        return "flux"
    if "StableDiffusion3" in class_name:
        return "sd3"
    raise UsageError(f"model {model!r} is a {class_name or 'unknown pipeline'}; headhunter supports SD3, SD3.5 and FLUX.1")


def load_pipeline(model: str, device: str | None = None, dtype: str = "auto", offload: bool = False) -> Any:
    """A HeadHunter pipeline for a tiny model name (``tiny-sd3``...), a local folder or a hub id."""
    from headhunter.pipelines import HeadHunterFluxPipeline, HeadHunterSD3Pipeline
    from headhunter.testing import TINY_MODELS, tiny_pipeline

    family = model_family(model)
    device = device or _default_device()
    torch_dtype = _resolve_dtype(dtype, device, family)
    if model.lower() in TINY_MODELS:
        pipe = tiny_pipeline(model.lower())
        if torch_dtype != pipe.transformer.dtype:
            pipe.to(dtype=torch_dtype)
    else:
        cls = HeadHunterFluxPipeline if family == "flux" else HeadHunterSD3Pipeline
        try:
            pipe = cls.from_pretrained(model, torch_dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot load {model!r}: {str(err).splitlines()[0]}") from None
    if offload:
        if device.startswith("cpu"):
            raise UsageError("--offload needs an accelerator device (e.g. --device cuda)")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _parse_size(text: str) -> tuple[int, int]:
    try:
        if "x" in text.lower():
            width, height = (int(x) for x in text.lower().split("x"))
        else:
            width = height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or WxH, e.g. 1024 or 768x1024") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return width, height


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds {text!r} must be integers joined by commas, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _parse_interval(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"interval {text!r} must be START,END fractions, e.g. 0,0.5") from None
    return start, end


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-sd3",
                        help="hub id, local pipeline folder, or a tiny offline model (tiny-sd3, tiny-sd3.5, tiny-flux)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 28; 2 for tiny models)")
    parser.add_argument("--size", type=_parse_size, default=None, help="N or WxH (default: the model's; 32 for tiny)")
    parser.add_argument("--cfg", type=float, default=None,
                        help="classifier-free guidance: SD3 guidance_scale, FLUX true_cfg_scale (default: off)")
    parser.add_argument("--flux-guidance", type=float, default=3.5, help="FLUX distilled guidance_scale (default 3.5)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--heads", default=None, help="heads to perturb: 'L13H17,L1H10@0.5', a preset name or a JSON file")
    parser.add_argument("--pag-scale", type=float, default=3.0, help="perturbation-guidance scale w (default 3)")
    parser.add_argument("--softness", type=float, default=1.0, help="softness u in [0, 1] for heads without @u")
    parser.add_argument("--target", default="identity", help="identity, uniform, query_mean or max")
    parser.add_argument("--scope", default="joint", help="joint or image")
    parser.add_argument("--interval", type=_parse_interval, default=(0.0, 1.0), help="START,END fractions of the steps")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on cpu, fp16 SD3 / bf16 FLUX on gpu), float32, float16, bfloat16")
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (needs a GPU)")


def _generation_settings(args: argparse.Namespace, family: str, tiny: bool) -> dict[str, Any]:
    width, height = args.size or ((32, 32) if tiny else (1024, 1024) if family == "sd3" else (512, 512))
    steps = args.steps if args.steps is not None else (2 if tiny else 28)
    if steps <= 0:
        raise UsageError("--steps must be positive")
    settings: dict[str, Any] = {
        "model": args.model, "width": width, "height": height, "num_inference_steps": steps,
        "negative_prompt": args.negative_prompt, "pag_heads": args.heads, "pag_scale": args.pag_scale,
        "pag_softness": args.softness, "pag_target": args.target, "pag_scope": args.scope,
        "pag_interval": list(args.interval),
    }
    if family == "sd3":
        settings["guidance_scale"] = args.cfg if args.cfg is not None else 1.0
    else:
        settings["guidance_scale"] = args.flux_guidance
        settings["true_cfg_scale"] = args.cfg if args.cfg is not None else 1.0
        if tiny:
            settings["max_sequence_length"] = 48
    return settings


def _call_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in settings.items() if k not in ("model", "prompt", "seed")}
    kwargs["pag_interval"] = tuple(kwargs["pag_interval"])
    return kwargs


def generate_images(pipe: Any, settings: dict[str, Any], prompt: str, seeds: Sequence[int]) -> list:
    """One image per seed, in one batched call (each image has its own generator)."""
    import torch

    device = "cpu" if pipe.device.type == "cpu" else pipe.device
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    return pipe([prompt] * len(seeds), generator=generators, **_call_kwargs(settings)).images


def cmd_generate(args: argparse.Namespace) -> int:
    from headhunter.metadata import save_png
    from headhunter.testing import TINY_MODELS

    family = model_family(args.model)
    settings = _generation_settings(args, family, args.model.lower() in TINY_MODELS)
    pipe = load_pipeline(args.model, args.device, args.dtype, args.offload)
    _validate_call(pipe, settings)
    out = Path(args.out)
    start = time.perf_counter()
    images = generate_images(pipe, settings, args.prompt, args.seed)
    written = []
    for seed, image in zip(args.seed, images):
        record = {**settings, "prompt": args.prompt, "seed": seed}
        stem = f"{_slug(args.prompt)}-s{seed}" + ("-hh" if args.heads else "")
        written.append(save_png(image, out / f"{stem}.png", record))
    print(f"wrote {len(written)} image(s) in {time.perf_counter() - start:.1f}s:")
    for path in written:
        print(f"  {path}")
    return 0


def _validate_call(pipe: Any, settings: dict[str, Any]) -> None:
    """Check the pag_* settings against the loaded model before any image is generated."""
    from headhunter.arguments import PAGArguments

    PAGArguments.from_call(
        pipe.head_layout, pag_heads=settings["pag_heads"], pag_scale=settings["pag_scale"],
        pag_softness=settings["pag_softness"], pag_target=settings["pag_target"], pag_scope=settings["pag_scope"],
        pag_interval=settings["pag_interval"], pag_adaptive_scale=0.0, pag_applied_layers=None, num_prompts=1,
        num_images_per_prompt=1,
    )


def _slug(text: str, limit: int = 40) -> str:
    keep = "".join(c.lower() if c.isalnum() else "-" for c in text)
    return "-".join(part for part in keep.split("-") if part)[:limit] or "image"


def cmd_demo(args: argparse.Namespace) -> int:
    """On the tiny SD3 model: guided against unguided images, a short HeadHunter search with a weight-free objective,
    the objective with the found heads against no guidance, and a small evaluation with its report."""
    import numpy as np
    import torch
    from PIL import Image

    from headhunter.metadata import save_png
    from headhunter.scorers import load_scorer
    from headhunter.search import HeadHunter

    out = Path(args.out)
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


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"option {text!r} must be KEY=VALUE, e.g. local_files_only=true")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), float(value) if "." in value else int(value)
    except ValueError:
        return key.strip(), value


def cmd_score(args: argparse.Namespace) -> int:
    """Score image files with an objective spec; prompts come from --prompt or the images' headhunter metadata."""
    from PIL import Image

    from headhunter.metadata import read_settings
    from headhunter.scorers import ScorerUnavailable, load_scorer

    _import_modules(args.imports)
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such image file(s): {', '.join(missing)}")
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
        scorer = load_scorer(args.objective, device=args.device or _default_device(), **dict(args.option))
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


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UsageError(f"prompt file {str(path)!r} does not exist")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UsageError("give at least one --prompt or a --prompt-file with one prompt per line")
    if args.style:
        from headhunter.search import style_prompts

        prompts = style_prompts(args.style, prompts)
    return prompts


def _run_target(args: argparse.Namespace) -> tuple[str | None, str, bool, int, int]:
    """(device, model family, tiny model?, width, height) for search and eval; under accelerate / torchrun each process
    takes its own device."""
    from headhunter.testing import TINY_MODELS

    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        device = str(PartialState().device)
    family = model_family(args.model)
    tiny = args.model.lower() in TINY_MODELS
    width, height = args.size or ((32, 32) if tiny else (1024, 1024) if family == "sd3" else (512, 512))
    return device, family, tiny, width, height


def _import_modules(modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UsageError(f"cannot import {module!r} for --import: {err}") from None


def cmd_search(args: argparse.Namespace) -> int:
    """HeadHunter search; under `accelerate launch` / torchrun every process takes a share of the candidates."""
    from headhunter.scorers import ScorerUnavailable
    from headhunter.scorers.base import parse_spec
    from headhunter.search import HeadHunter

    _import_modules(args.imports)
    prompts = _read_prompts(args)
    parse_spec(args.objective)  # a bad spec fails before any model loads
    device, family, tiny, width, height = _run_target(args)
    pipe = load_pipeline(args.model, device, args.dtype, False)
    pipe.set_progress_bar_config(disable=True)
    extra = {"max_sequence_length": 48} if tiny and family == "flux" else {}
    try:
        hunter = HeadHunter(
            pipe, args.objective, prompts, args.seeds, args.top_k, args.rounds, args.run_dir,
            candidates=args.candidates, pag_scale=args.pag_scale, pag_softness=args.softness, pag_target=args.target,
            pag_scope=args.scope, num_inference_steps=args.steps or (2 if tiny else 20), height=height, width=width,
            guidance_scale=args.cfg, strategy=args.strategy, batch_size=args.batch_size,
            halving_initial_pairs=args.halving_initial_pairs, halving_keep=args.halving_keep,
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


def split_metrics(texts: Sequence[str]) -> list[str]:
    """Metric specs from comma-separated lists; a comma not followed by a scorer name stays inside the spec
    (``style:golden hour, warm glow``)."""
    import re

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


def cmd_eval(args: argparse.Namespace) -> int:
    """Generate every setting × prompt × seed, score, summarise and report; resumable."""
    import shlex

    from headhunter.evaluate import Evaluation, load_settings_file, parse_setting, read_prompts
    from headhunter.scorers import ScorerUnavailable
    from headhunter.scorers.base import parse_spec

    _import_modules(args.imports)
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
    device, family, tiny, width, height = _run_target(args)
    defaults: dict[str, Any] = {"num_inference_steps": args.steps or (2 if tiny else 28), "width": width, "height": height}
    if family == "sd3":
        defaults["guidance_scale"] = 1.0  # CFG off unless a setting asks for it
    elif tiny:
        defaults["max_sequence_length"] = 48
    pipe = load_pipeline(args.model, device, args.dtype, False)
    pipe.set_progress_bar_config(disable=True)
    command = "headhunter " + shlex.join(args.argv)
    try:
        result = Evaluation(pipe, prompts, args.seeds, settings, metrics, args.out, defaults=defaults,
                            model_name=args.model, batch_size=args.batch_size, scorer_options=dict(args.option),
                            commands=[command]).run()
    except ScorerUnavailable as err:
        raise UsageError(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{len(result.rows)} images ({result.generated} generated now) in {result.out_dir}")
        for row in result.summary:
            print(f"  {row['setting']:<24} {row['metric']:<16} {row['mean']:.4g}  [{row['ci_low']:.4g}, {row['ci_high']:.4g}]")
        print(f"report: {result.report}")
    return 0


BENCHMARKS = ("guidance", "search")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a script of the source checkout's benchmarks/ folder (they are not part of the installed package)."""
    import subprocess

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    script = folder / f"{args.name}.py"
    if not script.is_file():
        raise UsageError(f"benchmarks/{args.name}.py is not here: `headhunter bench` runs from a source checkout "
                         "(pip install -e .)")
    return subprocess.run([sys.executable, str(script), *args.options], check=False).returncode


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from headhunter.ui import launch
    except ImportError as err:
        raise UsageError(f"the studio needs Gradio: pip install 'headhunter[ui]' ({err})") from None
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    launch(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype, offload=args.offload,
           workspace=args.workspace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headhunter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images with head-level perturbation guidance")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--seed", type=_parse_seeds, default=[0], help="one seed or several joined by commas")
    gen.add_argument("--out", default="outputs", help="folder for the PNGs (default: outputs)")
    _add_generation_options(gen)
    gen.set_defaults(func=cmd_generate)

    search = sub.add_parser("search", help="HeadHunter search for the heads that serve an objective")
    search.add_argument("--model", default="tiny-sd3", help="hub id, local folder, or tiny-sd3 / tiny-flux")
    search.add_argument("--objective", required=True, help="scorer spec, e.g. pickscore or 'style:golden hour'")
    search.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    search.add_argument("--prompt-file", default=None, help="one prompt per line")
    search.add_argument("--style", default=None, help="prefix every prompt as 'STYLE, prompt' (the paper's style search)")
    search.add_argument("--seeds", type=_parse_seeds, default=[0], help="seeds joined by commas; every prompt × every seed")
    search.add_argument("--top-k", type=int, default=3, help="heads added per round (k)")
    search.add_argument("--rounds", type=int, default=1, help="rounds (R)")
    search.add_argument("--candidates", default=None, help="heads to search, e.g. L0-11 (default: all)")
    search.add_argument("--strategy", default="greedy", help="greedy (Algorithm 1) or halving")
    search.add_argument("--halving-initial-pairs", type=int, default=2)
    search.add_argument("--halving-keep", type=float, default=0.5)
    search.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    search.add_argument("--pag-scale", type=float, default=3.0)
    search.add_argument("--softness", type=float, default=1.0)
    search.add_argument("--target", default="identity")
    search.add_argument("--scope", default="joint")
    search.add_argument("--steps", type=int, default=None, help="default 20 (2 for tiny models)")
    search.add_argument("--size", type=_parse_size, default=None)
    search.add_argument("--cfg", type=float, default=None, help="SD3 guidance_scale (default 0: CFG off, as the paper)")
    search.add_argument("--run-dir", required=True, help="run directory; the same one with the same settings resumes")
    search.add_argument("--save-images", action="store_true")
    search.add_argument("--device", default=None)
    search.add_argument("--dtype", default="auto")
    search.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="scorer option, e.g. local_files_only=true")
    search.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (objectives registered with register_scorer)")
    search.set_defaults(func=cmd_search)

    ev = sub.add_parser("eval", help="generate and score image sets under several settings, with a report")
    ev.add_argument("--model", default="tiny-sd3", help="hub id, local folder, or tiny-sd3 / tiny-flux")
    ev.add_argument("--prompts", required=True, help=".txt (one per line), .csv or .jsonl (prompt, optional seed, style)")
    ev.add_argument("--seeds", type=_parse_seeds, default=[0])
    ev.add_argument("--setting", action="append", default=[], metavar="'NAME: key=value, ...'",
                    help="a named setting, e.g. 'hh3: heads=L1H10,L13H17, pag_scale=1,3,5' (sweeps expand)")
    ev.add_argument("--settings-file", default=None, help="TOML or JSON: {name: {key: value or [sweep]}}")
    ev.add_argument("--metrics", action="append", default=[], help="scorer specs joined by commas")
    ev.add_argument("--out", required=True, help="run directory (resumes when it exists)")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--size", type=_parse_size, default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    ev.set_defaults(func=cmd_eval)

    ui = sub.add_parser("ui", help="the Gradio studio")
    ui.add_argument("--model", default="tiny-sd3", help="hub id, local folder, or tiny-sd3 / tiny-flux (default)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--device", default=None, help="cuda when available, else cpu")
    ui.add_argument("--dtype", default="auto")
    ui.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (needs a GPU)")
    ui.add_argument("--workspace", default="headhunter-ui-runs", help="folder for the studio's search runs")
    ui.set_defaults(func=cmd_ui)

    bench = sub.add_parser("bench", help="run a benchmark script (guidance or search); options pass through")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark script, e.g. --repeats 3")
    bench.set_defaults(func=cmd_bench)

    score = sub.add_parser("score", help="score image files with an objective (see headhunter.scorers)")
    score.add_argument("images", nargs="+", help="image files")
    score.add_argument("--objective", required=True, help="spec, e.g. 'pickscore', '0.7*pickscore + 0.3*aesthetic', 'style:golden hour'")
    score.add_argument("--prompt", default=None, help="prompt for every image (default: each PNG's headhunter metadata)")
    score.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first, so objectives it registers with register_scorer can be named")
    score.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                       help="scorer option, e.g. model_id=/path/to/weights or local_files_only=true")
    score.add_argument("--device", default=None)
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(func=cmd_score)

    demo = sub.add_parser("demo", help="guided vs unguided images on the tiny offline model")
    demo.add_argument("--out", default="demo-output", help="folder for the images (default: demo-output)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (UsageError, ValueError) as err:
        print(f"headhunter: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
