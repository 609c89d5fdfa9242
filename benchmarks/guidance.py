"""Time one generation with diffusers' StableDiffusion3PAGPipeline against HeadHunterSD3Pipeline doing the same
perturbation (every head of one layer, u = 1, pag_scope="image"), plain CFG, and HeadHunter without prefix sharing.

Random-weight transformer at SD3-medium widths (24 heads x 64, joint_attention_dim 4096) with a configurable number of
layers; prompt embeddings are random tensors (text encoders do not matter here) and output_type="latent" (no VAE).
Methods run alternately, `--repeats` rounds; medians and ratios go to a JSON file and a markdown table.
Peak memory: each method once more in a fresh subprocess (CPU: the process's peak RSS, weights included, so
differences between methods are activation memory; CUDA: peak allocated over the level after a warm-up run).

    python benchmarks/guidance.py                          # CPU defaults: 8 layers, 256x256, fp32
    python benchmarks/guidance.py --device cuda --layers 24 --size 1024 --dtype bfloat16 --backend flash
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

METHODS = ("cfg", "diffusers_pag", "headhunter", "headhunter_unshared")


def build(method: str, args: argparse.Namespace):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3PAGPipeline, StableDiffusion3Pipeline

    from headhunter.pipelines import HeadHunterSD3Pipeline

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        transformer = SD3Transformer2DModel(
            sample_size=args.size // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=args.layers,
            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, pos_embed_max_size=192,
        ).eval()
        if dtype != torch.float32:
            transformer.to(dtype)
    if args.backend:
        transformer.set_attention_backend(args.backend)
    parts = dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
                 text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                 tokenizer_3=None)
    if method == "diffusers_pag":
        pipe = StableDiffusion3PAGPipeline(**parts, pag_applied_layers=[rf"blocks\.{args.perturb_layer}\."])
    elif method.startswith("headhunter"):
        pipe = HeadHunterSD3Pipeline(**parts)
        pipe.share_prefix = method == "headhunter"
    else:
        pipe = StableDiffusion3Pipeline(**parts)
    pipe.vae_scale_factor = 8  # no VAE is loaded; the real SD3 VAE downsamples by 8
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(method: str, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, args.text_tokens, 4096, generator=g).to(args.device, dtype)
    pooled = torch.randn(2, 2048, generator=g).to(args.device, dtype)
    kw = dict(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], pooled_prompt_embeds=pooled[:1],
              negative_pooled_prompt_embeds=pooled[1:], height=args.size, width=args.size,
              num_inference_steps=args.steps, guidance_scale=5.0, output_type="latent",
              generator=torch.Generator(args.device).manual_seed(0))
    if method == "diffusers_pag":
        kw["pag_scale"] = 3.0
    elif method.startswith("headhunter"):
        kw.update(pag_heads=f"L{args.perturb_layer}", pag_scale=3.0, pag_softness=1.0, pag_scope="image")
    return kw


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(pipe, method: str, args: argparse.Namespace) -> tuple[float, torch.Tensor]:
    kw = call_kwargs(method, args)
    sync(args.device)
    start = time.perf_counter()
    latents = pipe(**kw).images
    sync(args.device)
    return time.perf_counter() - start, latents


def memory_child(method: str, args: argparse.Namespace) -> None:
    """Runs in a subprocess: the peak memory of one generation of ``method``."""
    pipe = build(method, args)
    if args.device.startswith("cuda"):
        run_once(pipe, method, args)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(pipe, method, args)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # glibc keeps freed memory mapped, so a warm-up would hide the peak: measure the first generation.
        run_once(pipe, method, args)
        peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"peak_bytes": peak}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=154)
    parser.add_argument("--perturb-layer", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per method for peak memory")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None, help="diffusers attention backend, e.g. flash or _native_flash")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    pipes = {m: build(m, args) for m in METHODS}
    # PAG pipelines share one transformer design; give each the same weights so results are comparable
    state = pipes["cfg"].transformer.state_dict()
    for m in METHODS[1:]:
        pipes[m].transformer.load_state_dict(state)
    times = {m: [] for m in METHODS}
    latents = {}
    for m in METHODS:  # warm-up
        _, latents[m] = run_once(pipes[m], m, args)
    for r in range(args.repeats):
        order = METHODS if r % 2 == 0 else METHODS[::-1]
        for m in order:
            t, _ = run_once(pipes[m], m, args)
            times[m].append(t)
            print(f"round {r + 1}/{args.repeats} {m:>20}: {t:.2f}s", flush=True)
    del pipes

    samples = {m: [] for m in METHODS}
    for r in range(args.memory_repeats):
        for m in METHODS if r % 2 == 0 else METHODS[::-1]:
            cmd = [sys.executable, __file__, "--memory-child", m] + [
                a for k, v in vars(args).items() if k not in ("memory_child", "out") and v is not None
                for a in (f"--{k.replace('_', '-')}", str(v))
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            samples[m].append(json.loads(out)["peak_bytes"])
    memory = {m: statistics.median(v) for m, v in samples.items()}

    median = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "benchmark": "guidance", "date": date.today().isoformat(), "device": _device_name(args.device),
        "torch": torch.__version__, "settings": {k: v for k, v in vars(args).items() if k not in ("memory_child",)},
        "median_seconds": median, "all_seconds": times, "peak_memory_bytes": memory,
        "all_peak_memory_bytes": samples,
        "ratios": {
            "headhunter/diffusers_pag": median["headhunter"] / median["diffusers_pag"],
            "headhunter_unshared/diffusers_pag": median["headhunter_unshared"] / median["diffusers_pag"],
            "headhunter/headhunter_unshared": median["headhunter"] / median["headhunter_unshared"],
            "diffusers_pag/cfg": median["diffusers_pag"] / median["cfg"],
            "headhunter/cfg": median["headhunter"] / median["cfg"],
            "peak_memory headhunter/diffusers_pag": memory["headhunter"] / max(1, memory["diffusers_pag"]),
        },
        "max_abs_diff_headhunter_vs_diffusers_pag": (latents["headhunter"].float() - latents["diffusers_pag"].float()).abs().max().item(),
        "max_abs_diff_shared_vs_unshared": (latents["headhunter"].float() - latents["headhunter_unshared"].float()).abs().max().item(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"guidance-{args.device.split(':')[0]}-{args.layers}l-{args.size}px-{args.dtype}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"SD3-medium widths, {s['layers']} layers, {s['size']}x{s['size']}, {s['dtype']}, {s['steps']} steps, "
        f"{s['text_tokens']} text tokens, CFG 5, perturbing layer {s['perturb_layer']}; {r['device']}; torch {r['torch']}; "
        f"{r['date']}; medians of {s['repeats']} alternating rounds (memory: median of {s['memory_repeats']} fresh processes)",
        "",
        "| method | median s | vs diffusers PAG | peak memory MiB (CPU: process RSS) |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        ratio = r["median_seconds"][m] / r["median_seconds"]["diffusers_pag"]
        lines.append(f"| {m} | {r['median_seconds'][m]:.2f} | {ratio:.2f} | {r['peak_memory_bytes'][m] / 2**20:.0f} |")
    lines += ["", f"max |latents headhunter - diffusers PAG| = {r['max_abs_diff_headhunter_vs_diffusers_pag']:.2e}; "
              f"shared vs unshared prefix = {r['max_abs_diff_shared_vs_unshared']:.2e}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
