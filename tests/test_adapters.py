"""The adapters people load, with head guidance on.

LoRA: a tiny LoRA (peft, through ``load_lora_weights``) is active in every branch — unconditional, conditional and
perturbed — unfused, fused, weighted with ``set_adapters`` and with the perturbed rows forked after a shared prefix:
each branch's transformer output equals the same call on a transformer whose weights had the LoRA merged in by hand.

IP-Adapter: a tiny SD3.5 and a tiny FLUX.1 IP-Adapter (random weights, written in the published checkpoints' key
layouts and loaded with ``load_ip_adapter``) combine with ``pag_heads``: the pipeline equals the independent reference
of tests/reference.py, which runs every branch separately with the image embeddings and perturbs the layer's own
attention with explicit matrices (<= 1e-5 on the final latents)."""

import copy
from contextlib import contextmanager

import pytest
import torch
from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, IPAdapterTimeImageProjection
from reference import reference_flux, reference_sd3
from safetensors.torch import save_file

from headhunter.testing import tiny_pipeline

TOL = 1e-5
SD3_KW = dict(num_inference_steps=2, height=32, width=32, output_type="latent")
# hand-expanded {(layer, head): u} of the heads used below, for the reference
HEADS, SOFTNESS = "L1H2,L2H0@0.5", {(1, 2): 1.0, (2, 0): 0.5}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextmanager
def branch_outputs(transformer):
    """Every transformer forward's output rows, in call order."""
    seen = []
    handle = transformer.register_forward_hook(lambda m, a, k, out: seen.append(out[0].detach().clone()),
                                               with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


# --- LoRA ----------------------------------------------------------------------------------------------------------
LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "ff.net.2")
RANK = 2


def _lora_state_dict(transformer, seed=1):
    """A rank-2 LoRA on every block's attention and MLP output, in diffusers' peft key layout."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, block in enumerate(transformer.transformer_blocks):
        for target in LORA_TARGETS:
            module = block.get_submodule(target)
            state[f"transformer.transformer_blocks.{i}.{target}.lora_A.weight"] = \
                torch.randn(RANK, module.in_features, generator=g) * 0.3
            state[f"transformer.transformer_blocks.{i}.{target}.lora_B.weight"] = \
                torch.randn(module.out_features, RANK, generator=g) * 0.3
    return state


def _merged_by_hand(pipe, state, weight):
    """``pipe`` with a deep copy of its transformer whose Linear weights are W + weight · B A (peft's scale
    lora_alpha / r is 1 here: no alphas are given, so lora_alpha = r)."""
    merged = copy.deepcopy(pipe.transformer)
    with torch.no_grad():
        for key, a in state.items():
            if not key.endswith("lora_A.weight"):
                continue
            b = state[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            merged.get_submodule(name).weight += weight * (b @ a)
    return type(pipe)(**{**pipe.components, "transformer": merged})


@pytest.fixture(scope="module")
def lora():
    """A tiny SD3 pipeline with the LoRA loaded, the state dict, and a LoRA-free pipeline of the same weights."""
    pipe = tiny_pipeline("tiny-sd3")
    plain = tiny_pipeline("tiny-sd3")
    state = _lora_state_dict(pipe.transformer)
    pipe.load_lora_weights(dict(state), adapter_name="toy")
    return pipe, state, plain


def _branches(pipe, **kw):
    with branch_outputs(pipe.transformer) as seen:
        latents = pipe("a red fox", generator=_gen(), pag_heads=HEADS, pag_scale=2.0, guidance_scale=2.5,
                       **SD3_KW, **kw).images
    return latents, seen


@pytest.mark.parametrize("way", ["loaded", "set_adapters 0.5", "fused", "no shared prefix"])
def test_a_lora_is_active_in_every_branch(lora, way):
    pipe, state, plain = lora
    weight = 0.5 if way == "set_adapters 0.5" else 1.0
    pipe.set_adapters(["toy"], adapter_weights=[weight])
    share = pipe.share_prefix
    try:
        if way == "fused":
            pipe.fuse_lora()
        if way == "no shared prefix":
            pipe.share_prefix = False
        latents, seen = _branches(pipe)
    finally:
        if way == "fused":
            pipe.unfuse_lora()
        pipe.share_prefix = share
        pipe.set_adapters(["toy"], adapter_weights=[1.0])
    merged = _merged_by_hand(plain, state, weight)
    merged_latents, merged_seen = _branches(merged)
    _, plain_seen = _branches(plain)
    assert len(seen) == len(merged_seen) == 2  # two steps, one forward each: [uncond, cond, perturbed] rows
    for step, (got, expected, without) in enumerate(zip(seen, merged_seen, plain_seen)):
        assert got.shape[0] == 3, got.shape  # the perturbed row is forked inside the forward
        for row, branch in enumerate(("unconditional", "conditional", "perturbed")):
            diff = (got[row] - expected[row]).abs().max().item()
            assert diff <= TOL, f"{way}, step {step}, {branch}: {diff} from the hand-merged weights"
            assert (got[row] - without[row]).abs().max() > 1e-2, f"{way}: the LoRA does not change the {branch} row"
    assert (latents - merged_latents).abs().max() <= TOL


def test_a_disabled_lora_gives_the_plain_weights_result(lora):
    pipe, state, plain = lora
    pipe.disable_lora()
    try:
        latents, _ = _branches(pipe)
    finally:
        pipe.enable_lora()
    expected, _ = _branches(plain)
    assert (latents - expected).abs().max() <= TOL


# --- IP-Adapter ----------------------------------------------------------------------------------------------------
_IMAGE_EMBED_DIM = 12


def _randomize(module, seed):
    """Every weight random (some start at zero), so the adapter's contribution is far above the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


# diffusers' names of the SD3.5 IP-Adapter resampler → the published checkpoint's (InstantX/SD3.5-Large-IP-Adapter),
# the inverse of SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers
_SD3_PROJ_NAMES = [(".ln0", ".0.norm1"), (".ln1", ".0.norm2"), (".attn.to_q", ".0.to_q"), (".attn.to_kv", ".0.to_kv"),
                   (".attn.to_out.0", ".0.to_out"), (".adaln_norm", ".1.0"), (".ff.net.0.proj", ".1.1"),
                   (".ff.net.2", ".1.3"), (".adaln_proj", ".2.1")]


def _sd3_ip_adapter(transformer, folder):
    """ip-adapter.safetensors for SD3.5 in the published key layout: image_proj.* (the time-conditioned resampler,
    its original names) and ip_adapter.<processor index>.* (norm_ip, to_k_ip, to_v_ip, norm_q, norm_k, norm_ip_k)."""
    inner = transformer.config.attention_head_dim * transformer.config.num_attention_heads
    proj = _randomize(IPAdapterTimeImageProjection(embed_dim=_IMAGE_EMBED_DIM, output_dim=inner, hidden_dim=64,
                                                   heads=1, num_queries=4, timestep_in_dim=320), 2)
    tensors = {}
    for key, value in proj.state_dict().items():
        if key.startswith("layers."):
            for ours, theirs in _SD3_PROJ_NAMES:
                key = key.replace(ours, theirs) if ours in key else key
        tensors[f"image_proj.{key}"] = value
    for index, _ in enumerate(transformer.attn_processors):
        processor = _randomize(SD3IPAdapterJointAttnProcessor2_0(
            hidden_size=inner, ip_hidden_states_dim=inner, head_dim=transformer.config.attention_head_dim,
            timesteps_emb_dim=64), 10 + index)
        tensors.update({f"ip_adapter.{index}.{k}": v for k, v in processor.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "ip-adapter.safetensors")
    return folder


def _flux_ip_adapter(transformer, folder):
    """ip_adapter.safetensors for FLUX.1 in XLabs' published key layout: ip_adapter_proj_model.{proj,norm}.* and
    double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.*"""
    joint, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    proj = _randomize(ImageProjection(image_embed_dim=_IMAGE_EMBED_DIM, cross_attention_dim=joint,
                                      num_image_text_embeds=4), 3)
    tensors = {"ip_adapter_proj_model.proj.weight": proj.image_embeds.weight,
               "ip_adapter_proj_model.proj.bias": proj.image_embeds.bias,
               "ip_adapter_proj_model.norm.weight": proj.norm.weight, "ip_adapter_proj_model.norm.bias": proj.norm.bias}
    g = torch.Generator().manual_seed(4)
    for i in range(len(transformer.transformer_blocks)):
        for kv in ("k", "v"):
            name = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            tensors[f"{name}.weight"] = torch.randn(inner, joint, generator=g) * 0.3
            tensors[f"{name}.bias"] = torch.randn(inner, generator=g) * 0.3
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, folder / "ip_adapter.safetensors")
    return folder


@pytest.fixture(scope="module")
def sd35_ip(tmp_path_factory):
    pipe = tiny_pipeline("tiny-sd3.5-dual")
    folder = _sd3_ip_adapter(pipe.transformer, tmp_path_factory.mktemp("sd35-ip"))
    pipe.load_ip_adapter(str(folder), weight_name="ip-adapter.safetensors", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(3.0)  # a strong adapter, so its effect stands far above the tolerance
    return pipe


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_sd35_ip_adapter_with_head_guidance_matches_the_branch_separate_reference(sd35_ip, guidance_scale):
    pipe = sd35_ip
    assert isinstance(pipe.transformer.transformer_blocks[1].attn.processor, SD3IPAdapterJointAttnProcessor2_0)
    g = torch.Generator().manual_seed(7)
    image, negative = torch.randn(1, 5, _IMAGE_EMBED_DIM, generator=g), torch.randn(1, 5, _IMAGE_EMBED_DIM, generator=g)
    embeds = torch.cat([negative, image]) if guidance_scale > 1 else image  # SD3: [negative; positive] with CFG
    kw = dict(**SD3_KW, guidance_scale=guidance_scale)
    got = pipe("a red fox", generator=_gen(3), pag_heads=HEADS, pag_scale=2.0, ip_adapter_image_embeds=embeds,
               **kw).images
    ref = reference_sd3(pipe, "a red fox", 3, SOFTNESS, steps=2, guidance_scale=guidance_scale, pag_scale=2.0,
                        ip_embeds=image, negative_ip_embeds=negative if guidance_scale > 1 else None)
    diff = (got - ref).abs().max().item()
    print(f"SD3.5 IP-Adapter, CFG {guidance_scale}: max |pipeline - reference| = {diff:.2e}")
    assert diff <= TOL, diff
    # both checks can fail: the adapter and the heads each move the latents far beyond the tolerance
    other = torch.randn(1, 5, _IMAGE_EMBED_DIM, generator=g)
    embeds_other = torch.cat([negative, other]) if guidance_scale > 1 else other
    moved = pipe("a red fox", generator=_gen(3), pag_heads=HEADS, pag_scale=2.0, ip_adapter_image_embeds=embeds_other,
                 **kw).images
    unguided = pipe("a red fox", generator=_gen(3), ip_adapter_image_embeds=embeds, **kw).images
    assert (moved - got).abs().max() > 1e-3 and (unguided - got).abs().max() > 1e-3


def test_flux_ip_adapter_with_head_guidance_matches_the_branch_separate_reference(tmp_path):
    pipe = tiny_pipeline("tiny-flux", num_layers=2, num_single_layers=2)
    _flux_ip_adapter(pipe.transformer, tmp_path)
    pipe.load_ip_adapter(str(tmp_path), weight_name="ip_adapter.safetensors",
                         image_encoder_pretrained_model_name_or_path=None)
    pipe.set_ip_adapter_scale(0.8)
    g = torch.Generator().manual_seed(7)
    embeds = [torch.randn(1, 1, _IMAGE_EMBED_DIM, generator=g)]
    heads, softness = "L1H0,L2H1@0.5", {(1, 0): 1.0, (2, 1): 0.5}  # a double- and a single-stream layer
    # no true CFG here, but diffusers' FLUX pipeline prepares negative image embeddings whenever an adapter is used
    # (encoding a black image unless they are given)
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="latent", max_sequence_length=48,
              negative_ip_adapter_image_embeds=[torch.zeros(1, 1, _IMAGE_EMBED_DIM)])
    got = pipe("a red fox", generator=_gen(3), pag_heads=heads, pag_scale=2.0, ip_adapter_image_embeds=embeds,
               **kw).images
    ref = reference_flux(pipe, "a red fox", 3, softness, steps=2, pag_scale=2.0, ip_embeds=embeds)
    diff = (got - ref).abs().max().item()
    print(f"FLUX.1 IP-Adapter: max |pipeline - reference| = {diff:.2e}")
    assert diff <= TOL, diff
    unguided = pipe("a red fox", generator=_gen(3), ip_adapter_image_embeds=embeds, **kw).images
    without = pipe("a red fox", generator=_gen(3), pag_heads=heads, pag_scale=2.0,
                   ip_adapter_image_embeds=[torch.zeros_like(embeds[0])], **kw).images
    assert (unguided - got).abs().max() > 1e-3 and (without - got).abs().max() > 1e-3
