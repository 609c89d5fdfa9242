"""What perturbing heads costs inside a forward: a FLUX.1-layout transformer (double- and single-stream blocks,
FLUX.1 widths: 24 heads × 128, joint dim 4096) called on two rows, stock, against the same call with the second
row a perturbed branch (``perturbed_heads`` with a plan that perturbs every head of every layer, u = 1) — so the
difference is the SoftPAG machinery and target alone, not extra rows. Methods alternate; medians and ratios go to
a JSON file and a markdown table.

    python benchmarks/perturbed_forward.py                     # CPU defaults: 2 double + 4 single layers, 256 px
    python benchmarks/perturbed_forward.py --device cuda --double 19 --single 38 --size 1024 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch


def build(args: argparse.Namespace):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(args.device):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=args.double, num_single_layers=args.single, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        ).eval()
    if args.dtype != "float32":
        transformer.to(getattr(torch, args.dtype))
    if args.backend:
        transformer.set_attention_backend(args.backend)
    return transformer


def inputs(args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(1)
    side = args.size // 16  # VAE 8, 2×2 packing
    dtype = getattr(torch, args.dtype)
    axis = torch.arange(side).float()
    image_ids = torch.stack(torch.meshgrid(torch.zeros(1), axis, axis, indexing="ij"), -1)
    x = torch.randn(1, side * side, 64, generator=g).repeat(2, 1, 1)
    context = torch.randn(1, args.text_tokens, 4096, generator=g).repeat(2, 1, 1)
    return {name: value.to(args.device) if isinstance(value, torch.Tensor) else value for name, value in dict(
        hidden_states=x.to(dtype), encoder_hidden_states=context.to(dtype),
        pooled_projections=torch.randn(1, 768, generator=g).repeat(2, 1).to(dtype),
        timestep=torch.full((2,), 0.5), img_ids=image_ids.reshape(-1, 3), txt_ids=torch.zeros(args.text_tokens, 3),
        return_dict=False).items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--target", default="identity")
    parser.add_argument("--scope", default="joint")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--tag", default="", help="appended to the result file names")
    args = parser.parse_args()

    from headhunter.attention import build_plan, perturbed_heads
    from headhunter.heads import HeadLayout

    transformer = build(args)
    layout = HeadLayout.from_transformer(transformer)
    everything = {(layer, head): 1.0 for layer in range(layout.num_layers) for head in range(layout.num_heads)}
    text_len = args.text_tokens
    kw = inputs(args)
    plan = build_plan(layout, [everything], do_classifier_free_guidance=False, target=args.target, scope=args.scope,
                      share_prefix=False, text_len=text_len, device=args.device)

    def stock() -> float:
        sync(args.device)
        start = time.perf_counter()
        transformer(**kw)
        sync(args.device)
        return time.perf_counter() - start

    one_row = {**kw, **{name: kw[name][:1] for name in ("hidden_states", "encoder_hidden_states", "pooled_projections",
                                                        "timestep")}}

    def perturbed() -> float:
        with perturbed_heads(transformer, plan):  # the row is forked at layer 0: two rows through every block
            sync(args.device)
            start = time.perf_counter()
            transformer(**one_row)
            sync(args.device)
        return time.perf_counter() - start

    times = {"stock_two_rows": [], "perturbed_every_head": []}
    with torch.inference_mode():
        for _ in range(2):
            stock(), perturbed()
        for _ in range(args.repeats):
            times["stock_two_rows"].append(stock())
            times["perturbed_every_head"].append(perturbed())
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["perturbed_every_head"] / medians["stock_two_rows"]
    import diffusers

    on_gpu = args.device.startswith("cuda")
    machine = f"{platform.machine()} {args.device}" + (f" ({torch.cuda.get_device_name()})" if on_gpu else
                                                       f", {torch.get_num_threads()} threads")
    record = dict(date=str(date.today()), machine=machine, torch=torch.__version__, diffusers=diffusers.__version__,
                  settings=vars(args), medians_s=medians, ratio=ratio)
    device = args.device.split(":")[0]
    name = f"perturbed-forward-{device}-{args.double}d{args.single}s-{args.size}px-{args.dtype}{args.tag}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = (f"FLUX.1 layout, {args.double} double + {args.single} single layers, 24 heads × 128, {args.size}px, "
             f"{args.text_tokens} text tokens, {args.dtype}, target {args.target}, scope {args.scope}; {machine}; "
             f"torch {torch.__version__}, diffusers {diffusers.__version__}; {record['date']}; medians of "
             f"{args.repeats} alternating rounds\n\n| forward of two rows | median ms |\n|---|---|\n"
             f"| stock | {medians['stock_two_rows'] * 1e3:.1f} |\n"
             f"| second row perturbed on every head of every layer | {medians['perturbed_every_head'] * 1e3:.1f} |\n\n"
             f"ratio perturbed / stock = {ratio:.3f}\n")
    (out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
