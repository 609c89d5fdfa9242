"""SoftPAG pipelines against an independent reference: explicit (1-u)·A + u·T attention maps inside diffusers' stock
processors, every branch of every image computed separately. fp32, max abs difference <= 1e-5 on final latents."""

import pytest
import torch
from reference import reference_chroma, reference_flux, reference_sd3

from headhunter.pipelines import HeadHunterChromaPipeline, HeadHunterFluxPipeline, HeadHunterSD3Pipeline
from headhunter.testing import build_pipeline, tiny_components

TOL = 1e-5
PROMPTS = ["a red fox in snow", "an old lighthouse"]
SEEDS = [3, 4]
# Mixed per-sample plans: different heads, per-head u, whole layers, a head range.
SD3_PLANS = ["L1H2@0.5,L2H0,L2H3@0.25", "L0H1-2@0.75,L2"]
FLUX_PLANS = ["L1H0@0.5,L3H1", "L0H1@0.8,L2,L3H0@0.3"]  # layers 0-1 double-stream, 2-3 single-stream


def _softness(spec, default=1.0, num_heads=4):
    # Hand-expanded {(layer, head): u}; written independently of HeadSet.softness_map for the reference.
    table = {}
    for token in spec.split(","):
        body, _, u = token.partition("@")
        u = float(u) if u else default
        layer, _, heads = body[1:].partition("H")
        layer = int(layer)
        if heads:
            lo, _, hi = heads.partition("-")
            rng = range(int(lo), int(hi or lo) + 1)
        else:
            rng = range(num_heads)
        for h in rng:
            table[(layer, h)] = u
    return table


@pytest.fixture(scope="module")
def sd3_pipes():
    out = {}
    for name in ("tiny-sd3", "tiny-sd3.5-dual"):
        out[name] = build_pipeline(HeadHunterSD3Pipeline, tiny_components(name))
    return out


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sd3.5-dual"])
@pytest.mark.parametrize(
    "target,scope", [("identity", "joint"), ("uniform", "joint"), ("query_mean", "joint"), ("max", "joint"), ("identity", "image")]
)
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_sd3_matches_explicit_reference(sd3_pipes, model, target, scope, guidance_scale):
    pipe = sd3_pipes[model]
    kwargs = dict(num_inference_steps=2, height=32, width=32, guidance_scale=guidance_scale, pag_scale=2.0)
    out = pipe(
        PROMPTS,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        pag_heads=SD3_PLANS,
        pag_target=target,
        pag_scope=scope,
        output_type="latent",
        **kwargs,
    ).images
    for i, (prompt, seed, plan) in enumerate(zip(PROMPTS, SEEDS, SD3_PLANS)):
        ref = reference_sd3(
            pipe, prompt, seed, _softness(plan), steps=2, guidance_scale=guidance_scale, pag_scale=2.0,
            target=target, scope=scope,
        )
        diff = (out[i : i + 1] - ref).abs().max().item()
        assert diff <= TOL, f"image {i}: max abs diff {diff}"
    # The check must be able to fail: the perturbation changes the result well beyond the tolerance.
    plain = pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent", **kwargs).images
    assert (plain - out).abs().max() > 1e-3


@pytest.fixture(scope="module")
def flux_pipe():
    return build_pipeline(HeadHunterFluxPipeline, tiny_components("tiny-flux", num_layers=2, num_single_layers=2))


@pytest.mark.parametrize(
    "target,scope", [("identity", "joint"), ("uniform", "joint"), ("query_mean", "joint"), ("max", "joint"), ("identity", "image")]
)
@pytest.mark.parametrize("true_cfg", [False, True])
def test_flux_matches_explicit_reference(flux_pipe, target, scope, true_cfg):
    pipe = flux_pipe
    negative = ["blurry", "low quality"]
    cfg_kwargs = dict(true_cfg_scale=2.0) if true_cfg else {}
    out = pipe(
        PROMPTS,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        pag_heads=FLUX_PLANS,
        pag_scale=2.0,
        pag_target=target,
        pag_scope=scope,
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=48,
        output_type="latent",
        negative_prompt=negative if true_cfg else None,
        **cfg_kwargs,
    ).images
    for i, (prompt, seed, plan) in enumerate(zip(PROMPTS, SEEDS, FLUX_PLANS)):
        ref = reference_flux(pipe, prompt, seed, _softness(plan, num_heads=2), steps=2, pag_scale=2.0, target=target,
                             scope=scope, negative_prompt=negative[i] if true_cfg else None, **cfg_kwargs)
        diff = (out[i : i + 1] - ref).abs().max().item()
        assert diff <= TOL, f"image {i}: max abs diff {diff}"
        # Sensitivity: the same reference with u halved on one head is far from the pipeline's result.
        softened = {**_softness(plan, num_heads=2)}
        key = next(iter(softened))
        softened[key] /= 2
        off = reference_flux(pipe, prompt, seed, softened, steps=2, pag_scale=2.0, target=target, scope=scope,
                             negative_prompt=negative[i] if true_cfg else None, **cfg_kwargs)
        assert (out[i : i + 1] - off).abs().max().item() > 100 * TOL


@pytest.fixture(scope="module")
def chroma_pipe():
    return build_pipeline(HeadHunterChromaPipeline, tiny_components("tiny-chroma", num_layers=2, num_single_layers=2))


@pytest.mark.parametrize(
    "target,scope", [("identity", "joint"), ("uniform", "joint"), ("query_mean", "joint"), ("max", "joint"), ("identity", "image")]
)
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_chroma_matches_explicit_reference(chroma_pipe, target, scope, guidance_scale):
    """Chroma: FLUX.1's blocks with a text-padding attention mask in every block, forked with the perturbed rows."""
    pipe = chroma_pipe
    negative = ["blurry", "low quality, grainy"]
    prompts = ["a red fox", "an old lighthouse on a cliff at dusk"]  # different lengths: the padding mask matters
    out = pipe(
        prompts,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        pag_heads=FLUX_PLANS,
        pag_scale=2.0,
        pag_target=target,
        pag_scope=scope,
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=48,
        output_type="latent",
        negative_prompt=negative,
        guidance_scale=guidance_scale,
    ).images
    for i, (prompt, seed, plan) in enumerate(zip(prompts, SEEDS, FLUX_PLANS)):
        softness = _softness(plan, num_heads=2)
        ref = reference_chroma(pipe, prompt, seed, softness, steps=2, pag_scale=2.0, target=target, scope=scope,
                               negative_prompt=negative[i], guidance_scale=guidance_scale)
        diff = (out[i : i + 1] - ref).abs().max().item()
        assert diff <= TOL, f"image {i}: max abs diff {diff}"
        key = next(iter(softness))
        off = reference_chroma(pipe, prompt, seed, {**softness, key: softness[key] / 2}, steps=2, pag_scale=2.0,
                               target=target, scope=scope, negative_prompt=negative[i], guidance_scale=guidance_scale)
        assert (out[i : i + 1] - off).abs().max().item() > 100 * TOL
