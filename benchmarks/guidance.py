"""Time one generation with diffusers' StableDiffusion3PAGPipeline against HeadHunterSD3Pipeline doing the same
perturbation (every head of one layer, u = 1, pag_scope="image"), plain CFG, and HeadHunter without prefix sharing.

Random-weight transformer at SD3-medium widths (24 heads x 64, joint_attention_dim 4096) with a configurable number of
layers; prompt embeddings are random tensors (text encoders do not matter here) and output_type="latent" (no VAE).
Methods run alternately, `--repeats` rounds; medians and ratios go to a JSON file and a markdown table.
Peak memory: each method once more in a fresh subprocess (CPU: the process's peak RSS, weights included, so
differences between methods are activation memory; CUDA: peak allocated over the level after a warm-up run).

    python benchmarks/guidance.py                          # CPU defaults: 8 layers, 256x256, fp32
    python benchmarks/guidance.py --compile                # every transformer compiled in place (inductor)
    python benchmarks/guidance.py --device cuda --layers 24 --size 1024 --dtype bfloat16 --backend flash [--compile]

With --compile every method's transformer is compiled in place (`transformer.compile()`, inductor unless
--compile-backend says otherwise); the warm-up rounds compile, the timed rounds reuse the graphs, and peak memory is
not measured. The machinery part times what headhunter adds around a transformer of FLUX.1's 57 layers (19 double,
38 single; narrow heads, since its cost does not depend on width): building the plan, installing and restoring the
processors and hooks, and the per-step cost of the installed hooks and processors where they do nothing.
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
    parser.add_argument("--compile", action="store_true", help="compile every transformer in place")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--warmups", type=int, default=2, help="untimed rounds first (compilation happens there)")
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
    not_compiled = {}
    if args.compile:
        for pipe in pipes.values():
            pipe.transformer.compile(backend=args.compile_backend)
    times = {m: [] for m in METHODS}
    latents = {}
    for _ in range(args.warmups):  # compilation, caches
        for m in METHODS:
            try:
                _, latents[m] = run_once(pipes[m], m, args)
            except Exception as err:  # diffusers' PAG processor does not compile (an in-place fill on a view)
                if not args.compile:
                    raise
                reasons = [line.strip() for line in str(err).splitlines() if "Error:" in line] or [str(err)]
                not_compiled[m] = f"{type(err).__name__}, {reasons[-1][:300]}"
                pipes[m].transformer._compiled_call_impl = None  # run it eagerly instead
                torch._dynamo.reset()
                _, latents[m] = run_once(pipes[m], m, args)
    for r in range(args.repeats):
        order = METHODS if r % 2 == 0 else METHODS[::-1]
        for m in order:
            t, _ = run_once(pipes[m], m, args)
            times[m].append(t)
            print(f"round {r + 1}/{args.repeats} {m:>20}: {t:.2f}s", flush=True)
    del pipes

    samples = {m: [] for m in METHODS}
    for r in range(0 if args.compile else args.memory_repeats):
        for m in METHODS if r % 2 == 0 else METHODS[::-1]:
            cmd = [sys.executable, __file__, "--memory-child", m] + [
                a for k, v in vars(args).items() if k not in ("memory_child", "out") and v is not None
                and v is not False for a in ((f"--{k.replace('_', '-')}",) if v is True else (f"--{k.replace('_', '-')}", str(v)))
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            samples[m].append(json.loads(out)["peak_bytes"])
    memory = {m: statistics.median(v) if v else float("nan") for m, v in samples.items()}
    overhead = machinery_overhead(args)

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
        "machinery_57_layers": overhead,
        "not_compiled": not_compiled,
        "machinery_per_step_vs_guided_step": overhead["per_step_seconds"] / (median["headhunter"] / args.steps),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"guidance-{args.device.split(':')[0]}-{args.layers}l-{args.size}px-{args.dtype}"
    if args.compile:
        stem += f"-compiled-{args.compile_backend}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def machinery_overhead(args: argparse.Namespace, steps: int = 28, repeats: int = 41) -> dict:
    """What headhunter adds around a 57-layer FLUX.1-layout transformer, in seconds: plan building and install +
    restore once per call, and per step the installed hooks and processors on a step where the branch is off (the
    same Python work as on a guided step, minus the perturbation's own arithmetic)."""
    from diffusers import FluxTransformer2DModel

    from headhunter.attention import build_plan, perturbed_heads
    from headhunter.heads import HeadLayout

    torch.manual_seed(0)
    with torch.device(args.device):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=19, num_single_layers=38, attention_head_dim=8,
            num_attention_heads=24, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[2, 2, 4],
        ).eval()
    layout = HeadLayout.from_transformer(transformer)
    softness = [{(38, 18): 1.0, (2, 3): 0.5}]
    inputs = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.ones(1), img_ids=torch.zeros(16, 3),
                  txt_ids=torch.zeros(8, 3), return_dict=False)
    inputs = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def timed(fn) -> float:
        values = []
        for _ in range(repeats):
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            values.append(time.perf_counter() - start)
        return statistics.median(values)

    plan = build_plan(layout, softness, do_classifier_free_guidance=False, device=args.device)
    plan_s = timed(lambda: build_plan(layout, softness, do_classifier_free_guidance=False, device=args.device))

    def install():
        with perturbed_heads(transformer, plan, active=False):
            pass

    install_s = timed(install)
    stock, inert = [], []
    with torch.no_grad():
        transformer(**inputs)
        for _ in range(5):  # alternate, so drift in the machine's speed hits both alike
            stock.append(timed(lambda: transformer(**inputs)))
            with perturbed_heads(transformer, plan, active=False):
                inert.append(timed(lambda: transformer(**inputs)))
    stock_s, inert_s = statistics.median(stock), statistics.median(inert)
    per_step = (plan_s + install_s) / steps + max(0.0, inert_s - stock_s)
    return {"layers": layout.num_layers, "plan_seconds": plan_s, "install_restore_seconds": install_s,
            "stock_forward_seconds": stock_s, "installed_inert_forward_seconds": inert_s,
            "steps_per_call": steps, "per_step_seconds": per_step}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"SD3-medium widths, {s['layers']} layers, {s['size']}x{s['size']}, {s['dtype']}, {s['steps']} steps, "
        f"{s['text_tokens']} text tokens, CFG 5, perturbing layer {s['perturb_layer']}; {r['device']}; torch {r['torch']}; "
        f"{r['date']}; medians of {s['repeats']} alternating rounds"
        + (f", every transformer compiled in place ({s['compile_backend']})" if s.get("compile") else
           f" (memory: median of {s['memory_repeats']} fresh processes)"),
        "",
        "| method | median s | vs diffusers PAG | peak memory MiB (CPU: process RSS) |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        ratio = r["median_seconds"][m] / r["median_seconds"]["diffusers_pag"]
        name = f"{m} (eager: does not compile)" if m in r.get("not_compiled", {}) else m
        peak = r["peak_memory_bytes"][m]
        peak = "—" if peak != peak else f"{peak / 2**20:.0f}"  # not measured when compiled
        lines.append(f"| {name} | {r['median_seconds'][m]:.2f} | {ratio:.2f} | {peak} |")
    lines += ["", f"headhunter / headhunter_unshared (the prefix sharing alone; unshared does diffusers PAG's work) = "
              f"{r['ratios']['headhunter/headhunter_unshared']:.2f}"]
    for m, why in r.get("not_compiled", {}).items():
        lines += ["", f"{m} could not be compiled and ran eagerly: {why}"]
    m = r["machinery_57_layers"]
    lines += ["", f"max |latents headhunter - diffusers PAG| = {r['max_abs_diff_headhunter_vs_diffusers_pag']:.2e}; "
              f"shared vs unshared prefix = {r['max_abs_diff_shared_vs_unshared']:.2e}", "",
              f"Machinery at {m['layers']} layers (FLUX.1 layout): plan {m['plan_seconds'] * 1e3:.2f} ms and install + "
              f"restore {m['install_restore_seconds'] * 1e3:.2f} ms once per call; installed hooks and processors "
              f"{(m['installed_inert_forward_seconds'] - m['stock_forward_seconds']) * 1e3:+.2f} ms per step "
              f"(forward {m['stock_forward_seconds'] * 1e3:.2f} → {m['installed_inert_forward_seconds'] * 1e3:.2f} ms); "
              f"{m['per_step_seconds'] * 1e3:.2f} ms per step over a {m['steps_per_call']}-step call = "
              f"{r['machinery_per_step_vs_guided_step']:.2%} of the guided step above", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
