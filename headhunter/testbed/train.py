"""Train a toy model on this machine, resumably, and export it as a diffusers pipeline folder.

    python -m headhunter.testbed.train --work runs/toy-train --vae-steps 3000 --steps 12000 \\
        --export headhunter/testbed/toy-shapes
    python -m headhunter.testbed.train --model toy-scenes --work runs/toy-scenes --steps 2250 \\
        --vae-from headhunter/testbed/toy-shapes --export headhunter/testbed/toy-scenes

``--model`` picks the world (:mod:`.worlds`): its prompts, renders and training captions.

Two stages, each seeded and checkpointed to ``--work`` (every ``--save-every`` steps, on Ctrl-C, and at the end;
a rerun with the same ``--work`` goes on where it stopped, and a larger ``--steps`` trains further):

1. ``vae``: the ``AutoencoderKL`` learns to reconstruct rendered images (L1 + MSE + a small KL term). Its latents'
   mean and standard deviation become ``shift_factor`` and ``scaling_factor``.
   With ``--vae-from`` a trained toy pipeline's VAE is taken instead (the worlds share size and palette); only its
   latent statistics are measured again.
2. ``model``: the transformer and both text encoders learn together with rectified flow, the SD3 objective: for
   ``x₁`` a scaled latent, ``ε ~ N(0, I)`` and ``t ~ σ(N(0, 1))`` (logit-normal), ``x_t = (1 − t)·x₁ + t·ε`` and the
   transformer predicts ``v = ε − x₁`` (MSE). 10 % of prompts are dropped to the empty prompt so CFG works. An
   exponential moving average of the weights (decay 0.999) is what gets exported.

The world's held-out scenes (e.g. :func:`headhunter.testbed.data.held_out_scenes`) are never trained on. The
shipped toy-scenes stops early on purpose, at 2,250 steps: it has learnt the grammar but still gets many
compositions wrong without guidance, which is what it is for.

Without ``text_encoder_3`` the SD3 pipeline appends ``max_sequence_length`` (256 by default) all-zero text tokens.
They are identical through every layer (no positions on text tokens), so their effect is exactly that of one such
token whose attention logit is raised by ``log n``. Training uses one zero token with that bias, ``n`` drawn
log-uniformly in [1, 256] (half the time 256, the pipeline's default): the model is right for any
``max_sequence_length``, and fast with a short one.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .model import IMAGE_SIZE, toy_components
from .worlds import WORLDS, World

ZERO_TOKENS = 256  # the SD3 pipeline's default max_sequence_length


def _images(world: World, scenes: list) -> torch.Tensor:
    """uint8 [N, 3, H, W]: every scene rendered with seeds 0 .. seeds_per_scene - 1."""
    arrays = [np.asarray(world.render(scene, IMAGE_SIZE, seed)) for scene in scenes
              for seed in range(world.seeds_per_scene)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _captions(world: World, scenes: list, seed: int) -> list[str]:
    """One caption per image of :func:`_images`, in its order (seeded)."""
    rng = random.Random(seed)
    return [world.caption(scene, rng) for scene in scenes for _ in range(world.seeds_per_scene)]


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


class SinkJointProcessor:
    """SD3's joint attention (as ``JointAttnProcessor2_0``) with an additive bias on the keys' logits: ``sink_bias``
    [B, L_keys] stands for the multiplicity of identical tokens."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, sink_bias: torch.Tensor | None = None) -> Any:
        batch, image_len = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        text_q = heads(attn.add_q_proj(encoder_hidden_states))
        text_k = heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        query, key, value = (torch.cat(pair, dim=2) for pair in ((query, text_q), (key, text_k), (value, text_v)))
        mask = None if sink_bias is None else sink_bias[:, None, None, :].to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1])
        image_out, text_out = out[:, :image_len], out[:, image_len:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return attn.to_out[1](attn.to_out[0](image_out)), text_out


def encode_text(encoders: tuple[Any, Any], ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and pooled embeddings as ``StableDiffusion3Pipeline.encode_prompt`` makes them (penultimate hidden
    states of both CLIPs side by side, projections concatenated), without the zero tokens."""
    hidden, pooled = [], []
    for encoder in encoders:
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    return torch.cat(hidden, dim=-1), torch.cat(pooled, dim=-1)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.is_file() else None


def _progress(total: int, start: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)


def train_vae(vae: Any, images: torch.Tensor, work: Path, steps: int, batch: int, save_every: int, seed: int) -> None:
    path = work / "vae.pt"
    state = _load(path)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    step = 0
    if state is not None:
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = state["step"]
    if step >= steps:
        return

    def snapshot() -> dict:
        return {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "step": step}

    vae.train()
    bar = _progress(steps, step, "vae")
    try:
        while step < steps:
            index = torch.randint(len(images), (batch,), generator=generator)
            x = _to_unit(images[index])
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
            y = vae.decode(z).sample
            loss = F.l1_loss(y, x) + F.mse_loss(y, x) + 1e-6 * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % save_every == 0 or step == steps:
                _save(path, snapshot())
    except KeyboardInterrupt:
        _save(path, snapshot())
        raise
    finally:
        bar.close()
        vae.eval()


@torch.no_grad()
def encode_images(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of ``images``, then ``shift_factor`` and ``scaling_factor`` set from their statistics; the
    scaled latents are returned."""
    latents = torch.cat([vae.encode(_to_unit(images[i:i + 256])).latent_dist.mean for i in range(0, len(images), 256)])
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return (latents - shift) * scale


def _sink_bias(batch: int, keys: int, generator: torch.Generator) -> torch.Tensor:
    count = torch.exp(torch.rand(batch, generator=generator) * math.log(ZERO_TOKENS))
    count = torch.where(torch.rand(batch, generator=generator) < 0.5, torch.full_like(count, ZERO_TOKENS), count.round())
    bias = torch.zeros(batch, keys)
    bias[:, -1] = count.log()
    return bias


def train_model(components: dict, latents: torch.Tensor, prompt_ids: torch.Tensor, empty_ids: torch.Tensor,
                work: Path, steps: int, batch: int, save_every: int, seed: int, lr: float) -> dict:
    """Train transformer and text encoders; returns the EMA weights (name → state dict)."""
    names = ("transformer", "text_encoder", "text_encoder_2")
    modules = {name: components[name] for name in names}
    params = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = {name: {k: v.detach().clone() for k, v in module.state_dict().items()} for name, module in modules.items()}
    generator = torch.Generator().manual_seed(seed)
    path = work / "model.pt"
    step = 0
    state = _load(path)
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        ema = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = state["step"]
    transformer = components["transformer"]
    transformer.set_attn_processor(SinkJointProcessor())
    encoders = (components["text_encoder"], components["text_encoder_2"])

    def snapshot() -> dict:
        return {**{name: module.state_dict() for name, module in modules.items()}, "ema": ema,
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": step}

    for module in modules.values():
        module.train()
    bar = _progress(steps, step, "model")
    started, first = time.perf_counter(), step
    try:
        while step < steps:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 500)
            index = torch.randint(len(latents), (batch,), generator=generator)
            x1 = latents[index]
            ids = prompt_ids[index]  # each image has its own caption
            dropped = torch.rand(batch, generator=generator) < 0.1
            ids = torch.where(dropped[:, None], empty_ids[None], ids)
            text, pooled = encode_text(encoders, ids)
            text = torch.cat([text, text.new_zeros(batch, 1, text.shape[-1])], dim=1)
            t = torch.sigmoid(torch.randn(batch, generator=generator))
            noise = torch.randn(x1.shape, generator=generator)
            xt = (1 - t[:, None, None, None]) * x1 + t[:, None, None, None] * noise
            keys = x1.shape[-1] * x1.shape[-2] // 4 + text.shape[1]
            pred = transformer(hidden_states=xt, encoder_hidden_states=text, pooled_projections=pooled,
                               timestep=t * 1000, return_dict=False,
                               joint_attention_kwargs={"sink_bias": _sink_bias(batch, keys, generator)})[0]
            loss = F.mse_loss(pred, noise - x1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for name, module in modules.items():
                    for key, value in module.state_dict().items():
                        if value.dtype.is_floating_point:
                            ema[name][key].lerp_(value, 1 - decay)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}",
                            s_per_step=f"{(time.perf_counter() - started) / (step - first):.2f}")
            if step % save_every == 0 or step == steps:
                _save(path, snapshot())
    except KeyboardInterrupt:
        _save(path, snapshot())
        raise
    finally:
        bar.close()
    return ema


def export(components: dict, ema: dict, folder: Path) -> None:
    """Save the pipeline (EMA weights, stock attention processors) as a diffusers folder."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from headhunter.pipelines import HeadHunterSD3Pipeline

    for name, weights in ema.items():
        components[name].load_state_dict(weights)
    components["transformer"].set_attn_processor(JointAttnProcessor2_0())
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe = HeadHunterSD3Pipeline(**components)
    pipe.save_pretrained(folder, safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m headhunter.testbed.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(WORLDS), default="toy-shapes", help="the toy world to train on")
    parser.add_argument("--work", type=Path, required=True, help="checkpoint folder (resumed when it exists)")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=12000, help="transformer and text-encoder steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scenes", type=int, default=None, help="train on the first N training scenes only (tests)")
    parser.add_argument("--vae-from", type=Path, default=None, metavar="PIPELINE",
                        help="take the VAE of this toy pipeline folder (e.g. headhunter/testbed/toy-shapes) instead "
                             "of training one: the worlds share image size and palette")
    parser.add_argument("--export", type=Path, default=None, help="write the pipeline folder here when done")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _train(args)
    finally:  # a call from Python (the tests) leaves torch's thread count as it found it
        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    world = WORLDS[args.model]
    components = toy_components(args.seed, world.words, world.max_tokens)
    scenes = world.training()[: args.scenes]
    images = _images(world, scenes)
    print(f"{world.name}: {len(scenes)} training scenes, {len(images)} images")
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae").eval()
    else:
        train_vae(components["vae"], images, args.work, args.vae_steps, min(32, args.batch), args.save_every,
                  args.seed)
    latents = encode_images(components["vae"], images)
    tokenizer = components["tokenizer"]
    prompt_ids = tokenizer(_captions(world, scenes, args.seed), padding="max_length", truncation=True,
                           return_tensors="pt").input_ids  # one per image
    empty_ids = tokenizer([""], padding="max_length", return_tensors="pt").input_ids[0]
    ema = train_model(components, latents, prompt_ids, empty_ids, args.work, args.steps, args.batch, args.save_every,
                      args.seed + 1, args.lr)
    if args.export is not None:
        export(components, ema, args.export)
        print(f"saved {args.export}")


if __name__ == "__main__":
    main()
