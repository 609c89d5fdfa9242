"""``headhunter generate``: images with head-level perturbation guidance, each PNG carrying its settings."""

from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

from .common import (MODEL_HELP, check_writable_dir, default_size, non_negative_float, parse_interval, parse_seeds,
                     parse_size, positive_int, unique_path)

__all__ = ["add_generation_options", "generate_images", "register", "validate_call"]


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-sd3", help=MODEL_HELP)
    parser.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default 28; 20 for the toy models, 2 for tiny models)")
    parser.add_argument("--size", type=parse_size, default=None, help="N or WxH (default: the model's; 32 for the built-in models)")
    parser.add_argument("--cfg", type=non_negative_float, default=None,
                        help="classifier-free guidance: SD3 guidance_scale, FLUX true_cfg_scale (default: off; Wan: 5)")
    parser.add_argument("--flux-guidance", type=non_negative_float, default=3.5,
                        help="FLUX distilled guidance_scale (default 3.5)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--heads", default=None,
                        help="heads to perturb: 'L13H17,L1H10@0.5', a preset name, a JSON file, an exported folder "
                             "(hf://user/repo) or the reference implementation's final_perturb_heads.txt / .pkl")
    parser.add_argument("--pag-scale", type=non_negative_float, default=3.0, help="perturbation-guidance scale w (default 3)")
    parser.add_argument("--adaptive-scale", type=non_negative_float, default=0.0,
                        help="pag_adaptive_scale: lower the PAG scale as the steps go (default 0, off)")
    parser.add_argument("--softness", type=float, default=1.0, help="softness u in [0, 1] for heads without @u")
    parser.add_argument("--target", default="identity", help="identity, uniform, query_mean or max")
    parser.add_argument("--scope", default="joint", help="joint or image")
    parser.add_argument("--interval", type=parse_interval, default=(0.0, 1.0), help="START,END fractions of the steps")
    parser.add_argument("--pag-reuse", type=positive_int, default=1,
                        help="cheap mode: the perturbed pass on every k-th guided step, its v_c - v_perturbed reused "
                             "between (default 1: exact; 2 keeps the effect, 4 costs shape: see the README)")
    parser.add_argument("--pag-mode", choices=("cond", "uncond"), default="cond",
                        help="cond: a perturbed conditional pass (default); uncond: perturb the unconditional pass "
                             "instead (needs --cfg > 1: CFG's two passes a step; the weight is cfg - 1)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="video models (Wan): frames to generate (default 1: an image)")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on cpu, fp16 SD3 / bf16 FLUX on gpu), float32, float16, bfloat16")
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (needs a GPU)")


def generation_settings(args: argparse.Namespace, family: str) -> dict[str, Any]:
    from headhunter.guidance import default_cfg_scale
    from headhunter.pipelines.loading import builtin_defaults

    builtin = builtin_defaults(args.model)
    width, height = args.size or default_size(builtin, family)
    steps = args.steps if args.steps is not None else (builtin.steps if builtin else 28)
    settings: dict[str, Any] = {
        "model": args.model, "width": width, "height": height, "num_inference_steps": steps,
        "negative_prompt": args.negative_prompt, "pag_heads": args.heads, "pag_scale": args.pag_scale,
        "pag_softness": args.softness, "pag_target": args.target, "pag_scope": args.scope,
        "pag_interval": list(args.interval),
    }
    if args.adaptive_scale:
        settings["pag_adaptive_scale"] = args.adaptive_scale
    for key in ("pag_reuse", "pag_mode"):  # recorded only when asked for: the defaults are the exact method
        if getattr(args, key, None) not in (None, 1, "cond"):
            settings[key] = getattr(args, key)
    if getattr(args, "frames", None) is not None and args.frames > 1:
        if family != "wan":
            raise ValueError(f"--frames {args.frames}: only video models (Wan) make frames; this model makes images")
        settings["num_frames"] = args.frames
    if family == "flux":
        settings["guidance_scale"] = args.flux_guidance
        settings["true_cfg_scale"] = args.cfg if args.cfg is not None else 1.0
    else:  # SD3 and the modular pipelines' guider (FLUX.2 Klein base, Qwen-Image, Z-Image; Wan with CFG, as used)
        settings["guidance_scale"] = args.cfg if args.cfg is not None else default_cfg_scale(family)
    settings.update(builtin.call if builtin else {})
    return settings


def call_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in settings.items() if k not in ("model", "prompt", "seed")}
    kwargs["pag_interval"] = tuple(kwargs["pag_interval"])
    return kwargs


def generate_images(pipe: Any, settings: dict[str, Any], prompt: str, seeds: Sequence[int]) -> Any:
    """One image (or video: ``.frames``) per seed, in one batched call (each image has its own generator)."""
    import torch

    device = "cpu" if pipe.device.type == "cpu" else pipe.device
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    return pipe([prompt] * len(seeds), generator=generators, **call_kwargs(settings))


def validate_call(pipe: Any, settings: dict[str, Any]) -> None:
    """Check the settings against the loaded model before any image is generated."""
    from headhunter.arguments import PAGArguments, check_image_size, classifier_free_guidance_on

    pag = PAGArguments.from_call(
        pipe.head_layout, pag_heads=settings["pag_heads"], pag_scale=settings["pag_scale"],
        pag_softness=settings["pag_softness"], pag_target=settings["pag_target"], pag_scope=settings["pag_scope"],
        pag_interval=settings["pag_interval"], pag_adaptive_scale=settings.get("pag_adaptive_scale", 0.0),
        pag_applied_layers=None, num_prompts=1, num_images_per_prompt=1,
        pag_reuse=settings.get("pag_reuse", 1), pag_mode=settings.get("pag_mode", "cond"),
    )
    family = pipe.head_layout.model_type
    pag.check_classifier_free_guidance(classifier_free_guidance_on(settings, family),
                                       "--cfg > 1 with --negative-prompt" if family == "flux" else "--cfg > 1")
    check_image_size(pipe, settings["height"], settings["width"])


def slug(text: str, limit: int = 40) -> str:
    keep = "".join(c.lower() if c.isalnum() else "-" for c in text)
    return "-".join(part for part in keep.split("-") if part)[:limit] or "image"


def run(args: argparse.Namespace) -> int:
    from headhunter.metadata import save_png, save_video
    from headhunter.pipelines import load_pipeline, model_family

    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    out = check_writable_dir(args.out, "--out")
    family = model_family(args.model)
    settings = generation_settings(args, family)
    pipe = load_pipeline(args.model, args.device, args.dtype, args.offload)
    validate_call(pipe, settings)
    start = time.perf_counter()
    result = generate_images(pipe, settings, args.prompt, args.seed)
    videos = getattr(result, "frames", None) if settings.get("num_frames") else None
    written = []
    for index, (seed, image) in enumerate(zip(args.seed, result.images)):
        record = {**settings, "prompt": args.prompt, "seed": seed}
        path = unique_path(out / (f"{slug(args.prompt)}-s{seed}" + ("-hh" if args.heads else "") + ".png"))
        if videos:
            save_video(videos[index], path, record)
            written += [path.with_suffix(".webp"), path.with_suffix("")]
        else:
            written.append(save_png(image, path, record))
    print(f"wrote {len(args.seed)} {'video' if videos else 'image'}(s) in {time.perf_counter() - start:.1f}s:")
    for path in written:
        print(f"  {path}{'/ (frames)' if path.suffix == '' else ''}")
    return 0


def register(sub: Any) -> None:
    gen = sub.add_parser("generate", help="generate images with head-level perturbation guidance")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--seed", type=parse_seeds, default=[0], help="one seed or several joined by commas")
    gen.add_argument("--out", default="outputs", help="folder for the PNGs (default: outputs; existing files are kept)")
    add_generation_options(gen)
    gen.set_defaults(func=run)
