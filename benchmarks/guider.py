"""The guider path's cost: HeadHunterGuidance in diffusers' own modular denoising loop against diffusers'
PerturbedAttentionGuidance and plain CFG, the guider machinery's share of a step, prefix reuse at an early and a late
first layer, and search throughput batched against one image per call.

Step timings: a random-weight Qwen-Image transformer at the real width (24 heads × 128, joint_attention_dim 3584)
with ``--layers`` layers, in diffusers' ``QwenImageCoreDenoiseStep`` with random prompt embeddings (the text encoder
and VAE do not matter here), ``output="latents"``. Every guided method runs CFG (g = 4) and perturbs every head of
one layer with the identity target (u = 1, w = 3): diffusers' PAG does exactly that, so its result is also compared.
Methods run alternately, ``--repeats`` rounds after a warm-up; the figure is the median time per step.

- ``cfg``: diffusers' ClassifierFreeGuidance (2 passes a step).
- ``diffusers_pag``: diffusers' PerturbedAttentionGuidance on that layer (3 passes).
- ``headhunter``: HeadHunterGuidance attached to the call (one installation, prefix reuse).
- ``headhunter_no_prefix``: the same with ``share_prefix=False``.
- ``headhunter_bare``: the guider as a plain component (installed around each perturbed pass, no prefix reuse).

Each is run with the perturbed layer first (L0, nothing to reuse) and last (L{layers-1}). The machinery figure is
the time spent inside the guider's own methods (set_state, prepare_inputs*, prepare_models, cleanup_models, forward)
per step, over the step's time. Search: ``headhunter search``'s engine on tiny-qwenimage (overhead-bound, like a
real model on a GPU with spare room), ``--search-batch`` images per call against one image per call.

    python benchmarks/guider.py                      # CPU defaults: 4 layers, 128 px, fp32
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

GUIDED = ("diffusers_pag", "headhunter", "headhunter_no_prefix", "headhunter_bare")
GUIDER_METHODS = ("set_state", "prepare_inputs", "prepare_inputs_from_block_state", "prepare_models",
                  "cleanup_models", "forward")


def build(args: argparse.Namespace):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageCoreDenoiseStep

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=args.layers, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56)).eval()
    pipe = QwenImageCoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, args.text, dtype=torch.long)
    inputs = dict(prompt_embeds=torch.randn(1, args.text, 3584, generator=g), prompt_embeds_mask=mask,
                  negative_prompt_embeds=torch.randn(1, args.text, 3584, generator=g), negative_prompt_embeds_mask=mask)
    return pipe, inputs


def guider_for(method: str, layer: int):
    from diffusers.guiders import ClassifierFreeGuidance, PerturbedAttentionGuidance

    from headhunter.guiders import HeadHunterGuidance

    if method == "cfg":
        return ClassifierFreeGuidance(guidance_scale=4.0)
    if method == "diffusers_pag":
        # start -1: diffusers 0.42 runs the perturbed pass where int(start·n) < step, so start 0 skips step 0
        return PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_scale=3.0,
                                          perturbed_guidance_start=-1.0, perturbed_guidance_stop=1.0,
                                          perturbed_guidance_layers=[layer])
    return HeadHunterGuidance(heads=f"L{layer}", pag_scale=3.0, guidance_scale=4.0,
                              share_prefix=method != "headhunter_no_prefix")


class MachineryClock:
    """Wraps a guider's own methods and adds up the time spent in them."""

    def __init__(self, guider) -> None:
        self.seconds = 0.0
        for name in GUIDER_METHODS:
            method = getattr(guider, name, None)
            if method is not None:
                setattr(guider, name, self._timed(method))

    def _timed(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def run(pipe, inputs, method: str, layer: int, args: argparse.Namespace, clock: bool = False):
    """(seconds per step, machinery seconds per step, latents) of one call."""
    guider = guider_for(method, layer)
    machinery = MachineryClock(guider) if clock else None
    pipe.update_components(guider=guider)
    call = dict(**inputs, height=args.size, width=args.size, num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(2), output="latents")
    start = time.perf_counter()
    with torch.no_grad():
        if method in ("headhunter", "headhunter_no_prefix"):
            with guider.attached(pipe.transformer, pipe.scheduler):
                latents = pipe(**call)
        else:
            latents = pipe(**call)
    seconds = time.perf_counter() - start
    return seconds / args.steps, (machinery.seconds / args.steps if machinery else None), latents


def step_timings(args: argparse.Namespace) -> dict:
    pipe, inputs = build(args)
    layers = {"early": 0, "late": args.layers - 1}
    cases = [("cfg", 0)] + [(method, layer) for layer in layers.values() for method in GUIDED]
    results = {case: [] for case in cases}
    machinery = {case: [] for case in cases if case[0].startswith("headhunter")}
    latents = {}
    for case in cases:  # warm-up, and each method's result once
        latents[case] = run(pipe, inputs, *case, args)[2]
    for round_ in range(args.repeats):
        for case in cases if round_ % 2 == 0 else reversed(cases):
            step, guider_seconds, _ = run(pipe, inputs, *case, args, clock=case in machinery)
            results[case].append(step)
            if guider_seconds is not None:
                machinery[case].append(guider_seconds / step)
        print(f"round {round_ + 1}/{args.repeats} done", flush=True)
    median = {case: statistics.median(times) for case, times in results.items()}
    out = {"cfg_step_s": median[("cfg", 0)]}
    for where, layer in layers.items():
        pag = median[("diffusers_pag", layer)]
        out[where] = {
            "layer": layer,
            **{f"{method}_step_s": median[(method, layer)] for method in GUIDED},
            **{f"{method}_vs_diffusers_pag": median[(method, layer)] / pag for method in GUIDED[1:]},
            "diffusers_pag_vs_cfg": pag / median[("cfg", 0)],
            "headhunter_vs_cfg": median[("headhunter", layer)] / median[("cfg", 0)],
            "max_abs_diff_headhunter_vs_diffusers_pag": float(
                (latents[("headhunter", layer)] - latents[("diffusers_pag", layer)]).abs().max()),
            "prefix_share_of_perturbed_pass": layer / args.layers,
            **{f"{method}_machinery_share": statistics.median(machinery[(method, layer)])
               for method in GUIDED[1:]},
        }
    return out


def search_throughput(args: argparse.Namespace) -> dict:
    from headhunter.search import HeadHunter
    from headhunter.testing import tiny_modular_pipeline

    pipe = tiny_modular_pipeline("qwenimage")
    prompts, seeds = ["a parrot", "a boat"], [0, 1]
    per_second = {1: [], args.search_batch: []}
    for round_ in range(args.repeats + 1):
        for batch in (1, args.search_batch) if round_ % 2 == 0 else (args.search_batch, 1):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                result = HeadHunter(pipe, "colorfulness", prompts, seeds, 1, 1, Path(folder), num_inference_steps=4,
                                    height=32, width=32, pag_scale=3.0, model_name="tiny-qwenimage", progress=False,
                                    batch_size=batch).run()
                seconds = time.perf_counter() - start
            if round_:  # the first round warms up
                per_second[batch].append(result.images_generated / seconds)
    median = {batch: statistics.median(values) for batch, values in per_second.items()}
    return {"images_per_s_one_per_call": median[1], f"images_per_s_{args.search_batch}_per_call":
            median[args.search_batch], "ratio": median[args.search_batch] / median[1],
            "images_per_search": result.images_generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--text", type=int, default=16, help="text tokens")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--search-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "guiders are experimental", once per guider
    torch.set_grad_enabled(False)
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": str(date.today()),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "steps": step_timings(args),
        "search": search_throughput(args),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"guider-{results['date']}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
