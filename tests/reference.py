"""An independent reference for SoftPAG: diffusers' stock attention processors with their attention kernel replaced
by an explicit N×N computation of ``(1 - u)·A + u·T`` per head, and a plain denoising loop that runs every branch of
every image separately (batch 1, no shared prefix). Nothing here imports headhunter's attention code."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models import attention_processor
from diffusers.models.transformers import transformer_flux
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps as flux_timesteps
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps as sd3_timesteps


def explicit_target(q: torch.Tensor, k: torch.Tensor, target: str, scope: str, image: slice) -> torch.Tensor:
    """T as an explicit [N, N] matrix for one head; q, k are [N, D]."""
    n, d = q.shape
    logits = q @ k.T / d**0.5
    if scope == "image":
        mask = torch.zeros(n, n)
        idx = torch.arange(n)[image]
        mask[idx[:, None], idx[None, :]] = float("-inf")
        mask[idx, idx] = 0.0
        return (logits + mask).softmax(-1)
    if target == "identity":
        return torch.eye(n)
    if target == "uniform":
        return torch.full((n, n), 1.0 / n)
    if target == "query_mean":
        row = (q.mean(0, keepdim=True) @ k.T / d**0.5).softmax(-1)
        return row.expand(n, n)
    if target == "max":
        return F.one_hot((q @ k.T).argmax(-1), n).to(q.dtype)
    raise AssertionError(target)


class ExplicitKernel:
    """Attention kernel computing ``((1 - u)·A + u·T)·V`` per head with explicit matrices, for batch 1 only.

    Only a layer's own attention is perturbed: the first kernel call after the layer's attention module starts. A
    second call in the same module (an IP-Adapter's image-prompt attention, in diffusers' SD3 and FLUX IP-Adapter
    processors) is computed explicitly and left as it is."""

    def __init__(self, softness: dict, target: str, scope: str, image_first: bool, n_text: int):
        self.softness = softness  # {(layer, head): u}
        self.target, self.scope = target, scope
        self.image_first, self.n_text = image_first, n_text
        self.layer = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v: [1, H, N, D] → [1, H, N, D]; ``mask``: the model's attention mask, added to A's logits (a float
        mask, as Chroma's) or masking them (bool). The targets T are the model's own, without the mask."""
        assert q.shape[0] == 1, "the reference runs one image at a time"
        layer, self.layer = self.layer, None
        n = q.shape[2]
        image = slice(0, n - self.n_text) if self.image_first else slice(self.n_text, n)
        outs = []
        for h in range(q.shape[1]):
            qh, kh, vh = q[0, h].double(), k[0, h].double(), v[0, h].double()
            logits = qh @ kh.T / qh.shape[-1] ** 0.5
            if mask is not None:
                m = mask.reshape(-1, n, n)[0] if mask.numel() >= n * n else mask.reshape(1, n).expand(n, n)
                logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.double()
            a = logits.softmax(-1)
            u = self.softness.get((layer, h), 0.0)
            if u > 0:
                t = explicit_target(qh, kh, self.target, self.scope, image).double()
                if self.scope == "image":  # text queries keep their attention (T = A there), mask and all
                    text_rows = torch.ones(n, dtype=torch.bool)
                    text_rows[image] = False
                    t[text_rows] = a[text_rows]
                a = (1 - u) * a + u * t
            outs.append((a @ vh).to(v.dtype))
        # laid out in memory as SDPA lays out its output ([B, N, H, D]): diffusers' SD3 IP-Adapter processor .view()s
        # it after a transpose
        return torch.stack(outs)[None].transpose(1, 2).contiguous().transpose(1, 2)


@contextlib.contextmanager
def explicit_attention(transformer, kernel: ExplicitKernel, layer_of: dict):
    """Route the stock processors' attention through ``kernel``; ``layer_of`` maps attention modules to layer numbers."""

    def sdpa(query, key, value, *args, **kwargs):  # SD3 stock processors: [B, H, N, D]
        return kernel(query, key, value)

    def dispatch(query, key, value, attn_mask=None, *args, **kwargs):  # FLUX, Chroma stock processors: [B, N, H, D]
        return kernel(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask).transpose(1, 2)

    fake_f = types.SimpleNamespace(**{name: getattr(F, name) for name in dir(F) if not name.startswith("__")})
    fake_f.scaled_dot_product_attention = sdpa
    handles = []
    for module, layer in layer_of.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, layer=layer: setattr(kernel, "layer", layer)))
    old_f, old_dispatch = attention_processor.F, transformer_flux.dispatch_attention_fn
    attention_processor.F, transformer_flux.dispatch_attention_fn = fake_f, dispatch
    try:
        yield
    finally:
        attention_processor.F, transformer_flux.dispatch_attention_fn = old_f, old_dispatch
        for handle in handles:
            handle.remove()


def _layers(transformer) -> dict:
    blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", []))
    layers = {block.attn: i for i, block in enumerate(blocks)}
    # SD3.5's image-only attn2 shares the patched kernel but is never perturbed.
    layers.update({block.attn2: None for block in blocks if getattr(block, "attn2", None) is not None})
    return layers


def _denoise(pipe, latents, timesteps, run, cond, uncond, cfg_scale, kernel, softness, pag_scale, reuse=1,
             interval=(0.0, 1.0), mode="cond", adaptive=0.0):
    """The guided sampling loop, one branch per forward: v = v_u + g (v_c - v_u) + w (v_c - v_p).

    The cheap modes, written out: a step is guided when start <= i/n < end; with ``reuse`` = k the perturbed branch
    runs on guided steps 0, k, 2k, ... (counted among guided steps) and the last v_c - v_p is used on the others;
    ``mode="uncond"`` perturbs the unconditional branch on guided steps and combines v = v_u' + g (v_c - v_u');
    ``adaptive`` = a lowers w to w_t = max(0, w - a (1000 - t)), and a step with w_t = 0 is not guided."""
    n, guided, delta = len(timesteps), 0, None
    for i, t in enumerate(timesteps):
        w_t = max(0.0, pag_scale - adaptive * (1000.0 - float(t)))
        on = bool(softness) and w_t > 0 and interval[0] <= i / n < interval[1]
        v_c = run(latents, *cond, t)
        v = v_c
        if uncond is not None:
            if mode == "uncond" and on:
                with explicit_attention(pipe.transformer, kernel, _layers(pipe.transformer)):
                    v_u = run(latents, *uncond, t)
            else:
                v_u = run(latents, *uncond, t)
            v = v_u + cfg_scale * (v_c - v_u)
        if on and mode == "cond":
            if guided % reuse == 0:
                with explicit_attention(pipe.transformer, kernel, _layers(pipe.transformer)):
                    v_p = run(latents, *cond, t)
                delta = v_c - v_p
            guided += 1
            v = v + w_t * delta
        latents = pipe.scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


def reference_sd3(pipe, prompt, seed, softness, *, steps, guidance_scale, pag_scale, target="identity", scope="joint",
                  negative_prompt=None, size=32, ip_embeds=None, negative_ip_embeds=None, **rule):
    """Final latents of one SD3 image, every branch run separately, perturbed attention from explicit matrices.
    ``ip_embeds`` (and ``negative_ip_embeds`` for the unconditional branch): a loaded IP-Adapter's image embeddings,
    given to every branch's forward."""
    cfg = guidance_scale > 1
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, None, None, negative_prompt=negative_prompt,
                                           do_classifier_free_guidance=cfg, device="cpu")
    latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, size, size, pe.dtype, "cpu",
                                   torch.Generator().manual_seed(seed), None)
    timesteps, _ = sd3_timesteps(pipe.scheduler, steps, "cpu")
    kernel = ExplicitKernel(softness, target, scope, image_first=True, n_text=pe.shape[1])

    def run(x, embeds, pooled, ip, t):
        kwargs = None if ip is None else {"ip_adapter_image_embeds": ip}  # a new dict: the forward pops it
        return pipe.transformer(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=embeds,
                                pooled_projections=pooled, joint_attention_kwargs=kwargs, return_dict=False)[0]

    uncond = (npe, nppe, negative_ip_embeds) if cfg else None
    return _denoise(pipe, latents, timesteps, run, (pe, ppe, ip_embeds), uncond, guidance_scale, kernel, softness,
                    pag_scale, **rule)


def _shifted_timesteps(pipe, latents, steps):
    """FLUX's and Chroma's schedule: linear sigmas, shifted by the image's token count."""
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(latents.shape[1], pipe.scheduler.config.get("base_image_seq_len", 256),
                         pipe.scheduler.config.get("max_image_seq_len", 4096),
                         pipe.scheduler.config.get("base_shift", 0.5), pipe.scheduler.config.get("max_shift", 1.15))
    timesteps, _ = flux_timesteps(pipe.scheduler, steps, "cpu", sigmas=sigmas, mu=mu)
    pipe.scheduler.set_begin_index(0)
    return timesteps


def reference_flux(pipe, prompt, seed, softness, *, steps, pag_scale, target="identity", scope="joint",
                   negative_prompt=None, true_cfg_scale=1.0, guidance_scale=3.5, size=32, max_sequence_length=48,
                   ip_embeds=None, **rule):
    """Final (packed) latents of one FLUX image, every branch run separately; ``ip_embeds``: a loaded IP-Adapter's
    image embeddings (a list, one per adapter), given to the conditional and perturbed branches."""
    pe, ppe, text_ids = pipe.encode_prompt(prompt, None, device="cpu", max_sequence_length=max_sequence_length)
    cfg = true_cfg_scale > 1 and negative_prompt is not None
    if cfg:
        npe, nppe, _ = pipe.encode_prompt(negative_prompt, None, device="cpu", max_sequence_length=max_sequence_length)
    latents, image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, size, size, pe.dtype, "cpu",
                                              torch.Generator().manual_seed(seed), None)
    timesteps = _shifted_timesteps(pipe, latents, steps)
    guidance = torch.full([1], guidance_scale)
    kernel = ExplicitKernel(softness, target, scope, image_first=False, n_text=pe.shape[1])

    def run(x, embeds, pooled, ip, t):
        kwargs = None if ip is None else {"ip_adapter_image_embeds": ip}
        return pipe.transformer(hidden_states=x, timestep=t.expand(1) / 1000, guidance=guidance,
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=image_ids, joint_attention_kwargs=kwargs, return_dict=False)[0]

    uncond = (npe, nppe, None) if cfg else None
    return _denoise(pipe, latents, timesteps, run, (pe, ppe, ip_embeds), uncond, true_cfg_scale, kernel, softness,
                    pag_scale, **rule)


def reference_chroma(pipe, prompt, seed, softness, *, steps, pag_scale, target="identity", scope="joint",
                     negative_prompt=None, guidance_scale=1.0, size=32, max_sequence_length=48, **rule):
    """Final (packed) latents of one Chroma image, every branch run separately, with the model's text-padding mask."""
    cfg = guidance_scale > 1
    pe, text_ids, mask, npe, _, nmask = pipe.encode_prompt(
        prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg, device="cpu",
        max_sequence_length=max_sequence_length)
    latents, image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, size, size, pe.dtype, "cpu",
                                              torch.Generator().manual_seed(seed), None)
    timesteps = _shifted_timesteps(pipe, latents, steps)
    kernel = ExplicitKernel(softness, target, scope, image_first=False, n_text=pe.shape[1])

    def with_image(text_mask):  # the text-padding mask extended over the image tokens, as the pipeline does
        return torch.cat([text_mask, torch.ones(1, latents.shape[1], dtype=torch.bool)], dim=1)

    def run(x, embeds, text_mask, t):
        return pipe.transformer(hidden_states=x, timestep=t.expand(1) / 1000, encoder_hidden_states=embeds,
                                txt_ids=text_ids, img_ids=image_ids, attention_mask=with_image(text_mask),
                                return_dict=False)[0]

    uncond = (npe, nmask) if cfg else None
    return _denoise(pipe, latents, timesteps, run, (pe, mask), uncond, guidance_scale, kernel, softness, pag_scale,
                    **rule)
