"""Pipeline behaviour: stock equivalence, diffusers PAG equivalence, prefix sharing, per-sample plans, processor
restoration, bad input, schedules, and the diffusers features the pipelines must keep."""

import contextlib

import accelerate
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ChromaPipeline, FluxPipeline, StableDiffusion3PAGPipeline, StableDiffusion3Pipeline

import headhunter
from headhunter import HeadLayout, HeadSet, perturbed_heads
from headhunter.attention import build_plan
from headhunter.pipelines import HeadHunterChromaPipeline, HeadHunterFluxPipeline, HeadHunterSD3Pipeline
from headhunter.testing import build_pipeline, tiny_components, tiny_transformer

SD3_KW = dict(guidance_scale=1.0, num_inference_steps=2, height=32, width=32, output_type="latent")
FLUX_KW = dict(num_inference_steps=2, height=32, width=32, output_type="latent", max_sequence_length=48)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def count_rows(transformer):
    """Record the batch rows of every transformer call and the rows every block really computed (read after the
    forking hooks ran)."""
    calls = {"transformer": [], "blocks": []}
    handles = [transformer.register_forward_pre_hook(
        lambda m, a, k: calls["transformer"].append(k["hidden_states"].shape[0]), with_kwargs=True)]
    blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", []))
    for block in blocks:
        handles.append(block.register_forward_hook(
            lambda m, a, k, out: calls["blocks"].append((out[1] if isinstance(out, tuple) else out).shape[0]),
            with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def sd3(sd3_components):
    return build_pipeline(HeadHunterSD3Pipeline, sd3_components), build_pipeline(StableDiffusion3Pipeline, sd3_components)


@pytest.fixture(scope="module")
def flux(flux_components):
    return build_pipeline(HeadHunterFluxPipeline, flux_components), build_pipeline(FluxPipeline, flux_components)


# --- equivalence with the stock pipelines -------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"pag_heads": "L0H1@0,L2@0.0"}, {"pag_heads": "L1H2", "pag_scale": 0.0},
                                   {"pag_heads": None}, {"pag_heads": "L1", "pag_interval": (0.0, 0.0)}])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sd3_inactive_is_bit_identical_to_stock(sd3, extra, guidance_scale):
    hh, stock = sd3
    kw = {**SD3_KW, "guidance_scale": guidance_scale}
    with count_rows(stock.transformer) as stock_rows:
        expected = stock("a cat", generator=gen(), **kw).images
    with count_rows(hh.transformer) as rows:
        got = hh("a cat", generator=gen(), **extra, **kw).images
    assert torch.equal(got, expected)
    assert rows == stock_rows  # no extra batch rows, no extra forward


@pytest.mark.parametrize("extra", [{}, {"pag_heads": "L0@0"}, {"pag_heads": "L1H0", "pag_scale": 0}])
@pytest.mark.parametrize("cfg", [{}, {"negative_prompt": "blurry", "true_cfg_scale": 2.0}])
def test_flux_inactive_is_bit_identical_to_stock(flux, extra, cfg):
    hh, stock = flux
    with count_rows(stock.transformer) as stock_rows:
        expected = stock("a cat", generator=gen(), **cfg, **FLUX_KW).images
    with count_rows(hh.transformer) as rows:
        got = hh("a cat", generator=gen(), **cfg, **extra, **FLUX_KW).images
    assert torch.equal(got, expected)
    assert rows == stock_rows


@pytest.fixture(scope="module")
def chroma():
    components = tiny_components("tiny-chroma")
    return build_pipeline(HeadHunterChromaPipeline, components), build_pipeline(ChromaPipeline, components)


@pytest.mark.parametrize("extra", [{}, {"pag_heads": "L0@0"}, {"pag_heads": "L1H0", "pag_scale": 0}])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_chroma_inactive_is_bit_identical_to_stock(chroma, extra, guidance_scale):
    hh, stock = chroma
    kw = {**FLUX_KW, "negative_prompt": "blurry", "guidance_scale": guidance_scale}
    with count_rows(stock.transformer) as stock_rows:
        expected = stock("a cat", generator=gen(), **kw).images
    with count_rows(hh.transformer) as rows:
        got = hh("a cat", generator=gen(), **extra, **kw).images
    assert torch.equal(got, expected)
    assert rows == stock_rows


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_image_scope_matches_diffusers_sd3_pag(sd3_components, guidance_scale):
    names = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
             "text_encoder_3", "tokenizer_3")
    ref = StableDiffusion3PAGPipeline(**{k: sd3_components[k] for k in names}, pag_applied_layers=[r"blocks\.1\."])
    ref.set_progress_bar_config(disable=True)
    hh = build_pipeline(HeadHunterSD3Pipeline, sd3_components)
    kw = {**SD3_KW, "guidance_scale": guidance_scale, "pag_scale": 2.0}
    expected = ref("a cat", generator=gen(), **kw).images
    got = hh("a cat", generator=gen(), pag_heads="L1", pag_scope="image", pag_softness=1.0, **kw).images
    assert (got - expected).abs().max() <= 1e-5
    # pag_applied_layers, diffusers-style and matched exactly, is the same perturbation
    got2 = hh("a cat", generator=gen(), pag_applied_layers=["blocks.1"], pag_scope="image", **kw).images
    assert (got2 - expected).abs().max() <= 1e-5
    joint = hh("a cat", generator=gen(), pag_heads="L1", pag_scope="joint", **kw).images
    assert (joint - expected).abs().max() > 1e-3  # the scopes differ


# --- prefix sharing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux", "chroma"])
def test_fork_equals_whole_branch_and_saves_blocks(sd3, flux, chroma, family):
    hh = {"sd3": sd3, "flux": flux, "chroma": chroma}[family][0]
    kw = {"sd3": SD3_KW, "flux": FLUX_KW, "chroma": {**FLUX_KW, "guidance_scale": 1.0}}[family]  # CFG off
    heads = "L2H1" if family == "sd3" else "L3H0"  # last SD3 block / a single-stream FLUX block
    results = {}
    for share in (True, False):
        hh.share_prefix = share
        try:
            with count_rows(hh.transformer) as rows:
                results[share] = hh(["a cat", "a dog"], generator=[gen(1), gen(2)], pag_heads=heads, **kw).images
        finally:
            hh.share_prefix = True
        results[share, "blocks"] = rows["blocks"]
    assert (results[True] - results[False]).abs().max() <= 1e-5
    n_layers = hh.head_layout.num_layers
    fork = HeadSet.parse(heads).layers[0]
    per_step_shared = [2] * fork + [4] * (n_layers - fork)
    assert results[True, "blocks"] == per_step_shared * 2
    assert results[False, "blocks"] == [4] * n_layers * 2


# --- per-sample plans -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_per_sample_plans_equal_single_calls(sd3, guidance_scale):
    hh, _ = sd3
    prompts = ["a cat", "a dog", "a boat"]
    plans = ["L1H0,L2H3@0.5", None, [(0, 1), (2, 2, 0.25)]]
    kw = {**SD3_KW, "guidance_scale": guidance_scale}
    batched = hh(prompts, generator=[gen(s) for s in (5, 6, 7)], pag_heads=plans, **kw).images
    for i, (prompt, plan, seed) in enumerate(zip(prompts, plans, (5, 6, 7))):
        single = hh(prompt, generator=gen(seed), pag_heads=plan, **kw).images
        assert (batched[i : i + 1] - single).abs().max() <= 1e-5


def test_per_prompt_plans_cover_num_images_per_prompt(sd3):
    hh, _ = sd3
    gens = [gen(s) for s in (1, 2, 3, 4)]
    out = hh(["a cat", "a dog"], num_images_per_prompt=2, generator=gens, pag_heads=["L1H0", "L2"], **SD3_KW).images
    explicit = hh(["a cat", "a dog"], num_images_per_prompt=2, generator=[gen(s) for s in (1, 2, 3, 4)],
                  pag_heads=["L1H0", "L1H0", "L2", "L2"], **SD3_KW).images
    assert torch.equal(out, explicit)


# --- processors are restored ------------------------------------------------------------------------------------------
def test_processors_restored_after_call_and_after_error(sd3):
    hh, _ = sd3
    before = dict(hh.transformer.attn_processors)
    hh("a cat", generator=gen(), pag_heads="L0,L1H2", **SD3_KW)
    assert hh.transformer.attn_processors == before

    def boom(pipe, step, t, kwargs):
        raise RuntimeError("stop")

    seen = {}

    def spy(pipe, step, t, kwargs):
        seen["inside"] = type(pipe.transformer.transformer_blocks[0].attn.processor).__name__
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        hh("a cat", generator=gen(), pag_heads="L0", callback_on_step_end=boom, **SD3_KW)
    assert hh.transformer.attn_processors == before
    # an error raised inside the transformer forward, with the SoftPAG processors installed
    layout = HeadLayout.from_transformer(hh.transformer)
    plan = build_plan(layout, [{(0, 0): 1.0}], do_classifier_free_guidance=False)
    with pytest.raises(RuntimeError):
        with perturbed_heads(hh.transformer, plan):
            assert type(hh.transformer.transformer_blocks[0].attn.processor).__name__ == "SoftPAGProcessor"
            hh.transformer(hidden_states=torch.randn(3, 16, 16, 16), timestep=torch.ones(3),
                           encoder_hidden_states=torch.randn(3, 5, 32), pooled_projections=torch.randn(3, 64))
    assert hh.transformer.attn_processors == before
    assert not hh.transformer.transformer_blocks[0]._forward_pre_hooks


# --- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"pag_heads": "L1X2"}, "L1X2"),
        ({"pag_heads": "L9H0"}, r"L9H0: layer 9 is out of range; this model has layers 0-2"),
        ({"pag_heads": "L1H7"}, r"L1H7: head 7 is out of range.*heads 0-3"),
        ({"pag_heads": "L1H0@1.5"}, r"outside \[0, 1\]"),
        ({"pag_heads": "L1H0", "pag_softness": -0.1}, r"outside \[0, 1\]"),
        ({"pag_heads": "L1", "pag_target": "blur"}, "unknown pag_target 'blur'"),
        ({"pag_heads": "L1", "pag_scope": "text"}, "unknown pag_scope 'text'"),
        ({"pag_heads": "L1", "pag_scope": "image", "pag_target": "uniform"}, "for pag_target='identity' only"),
        ({"pag_heads": "L1", "pag_interval": (0.8, 0.2)}, "pag_interval"),
        ({"pag_heads": ["L1", "L2", "L0"]}, "3 head sets but the call generates 1"),
        ({"pag_heads": "not-a-preset"}, "neither a head spec"),
        ({"pag_applied_layers": ["blocks.1.attn"]}, "blocks.N"),
        ({"pag_heads": "L1", "pag_scale": float("nan")}, "finite"),
        ({"pag_heads": "L1", "pag_scale": -3.0}, "pag_scale must be >= 0"),
    ],
)
def test_bad_input_raises_value_error_and_changes_nothing(sd3, kwargs, message):
    hh, _ = sd3
    before = dict(hh.transformer.attn_processors)
    step_index = hh.scheduler.step_index
    with pytest.raises(ValueError, match=message):
        hh("a cat", generator=gen(), **{**SD3_KW, **kwargs})
    assert hh.transformer.attn_processors == before
    assert hh.scheduler.step_index == step_index


def test_unsupported_transformer_is_a_value_error(sd3_components):
    from diffusers import DiTTransformer2DModel

    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, sample_size=8)
    with pytest.raises(ValueError, match="DiTTransformer2DModel is not supported"):
        HeadLayout.from_transformer(dit)
    plan = build_plan(HeadLayout("sd3", 3, 4, 8), [{(0, 0): 1.0}], do_classifier_free_guidance=False)
    with pytest.raises(ValueError, match="Linear is not supported"):
        with perturbed_heads(torch.nn.Linear(2, 2), plan):
            pass


# --- schedules -------------------------------------------------------------------------------------------------------
def test_interval_runs_branch_only_inside(sd3):
    hh, stock = sd3
    steps = {}

    def record(name):
        def cb(pipe, i, t, kwargs):
            steps.setdefault(name, []).append(kwargs["latents"].clone())
            return kwargs
        return cb

    kw = {**SD3_KW, "num_inference_steps": 4}
    stock("a cat", generator=gen(), callback_on_step_end=record("stock"), **kw)
    with count_rows(hh.transformer) as rows:
        hh("a cat", generator=gen(), pag_heads="L0H1", pag_interval=(0.5, 1.0), callback_on_step_end=record("hh"), **kw)
    # steps 0, 1 (fractions 0, 0.25) without the branch, steps 2, 3 with it
    assert rows["transformer"] == [1, 1, 1, 1]
    assert [r for r in rows["blocks"][::3]] == [1, 1, 2, 2]
    assert torch.equal(steps["hh"][0], steps["stock"][0]) and torch.equal(steps["hh"][1], steps["stock"][1])
    assert (steps["hh"][3] - steps["stock"][3]).abs().max() > 1e-3


def test_adaptive_scale_drops_the_branch_where_it_reaches_zero(sd3):
    hh, _ = sd3
    # Two steps at t = 1000 and t < 997: with w = 3, a = 1, w_t = max(0, 3 - (1000 - t)) is 3 then 0, so only the
    # first step computes the perturbed branch.
    hh.scheduler.set_timesteps(2)
    first, second = (float(t) for t in hh.scheduler.timesteps)
    assert first == 1000.0 and second < 997.0
    with count_rows(hh.transformer) as rows:
        hh("a cat", generator=gen(), pag_heads="L0", pag_scale=3.0, pag_adaptive_scale=1.0, **SD3_KW)
    assert rows["blocks"] == [2, 2, 2, 1, 1, 1]


# --- diffusers features kept --------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(sd3, output_type):
    hh, stock = sd3
    kw = {**SD3_KW, "output_type": output_type}
    got = hh("a cat", generator=gen(), pag_heads="L1H1", **kw).images
    ref = stock("a cat", generator=gen(), **kw).images
    if output_type == "pil":
        assert isinstance(got[0], PIL.Image.Image) and got[0].size == (32, 32)
    else:
        assert type(got) is type(ref) and got.shape == ref.shape
        assert np.isfinite(np.asarray(got)).all()


def test_return_dict_false_and_callback_tensors(sd3):
    hh, _ = sd3
    seen = []

    def cb(pipe, i, t, kwargs):
        seen.append(sorted(kwargs))
        return kwargs

    out = hh("a cat", generator=gen(), pag_heads="L1H1", return_dict=False, callback_on_step_end=cb,
             callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **SD3_KW)
    assert isinstance(out, tuple) and out[0].shape == (1, 16, 16, 16)
    assert seen == [["latents", "prompt_embeds"]] * 2


def test_from_pipe_and_from_pretrained(sd3, tmp_path):
    hh, stock = sd3
    via_pipe = HeadHunterSD3Pipeline.from_pipe(stock)
    via_pipe.set_progress_bar_config(disable=True)
    expected = hh("a cat", generator=gen(), pag_heads="L1H1", **SD3_KW).images
    assert torch.equal(via_pipe("a cat", generator=gen(), pag_heads="L1H1", **SD3_KW).images, expected)
    stock.save_pretrained(tmp_path)
    loaded = HeadHunterSD3Pipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, HeadHunterSD3Pipeline)
    assert (loaded("a cat", generator=gen(), pag_heads="L1H1", **SD3_KW).images - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("model,heads", [("tiny-sd3", "L0H1,L1"), ("tiny-flux", "L0H1,L2,L3H0")])
def test_fused_qkv_projections_match_unfused(model, heads):
    cls, kw = (HeadHunterFluxPipeline, FLUX_KW) if model == "tiny-flux" else (HeadHunterSD3Pipeline, SD3_KW)
    hh = build_pipeline(cls, tiny_components(model))
    expected = hh("a cat", generator=gen(), pag_heads=heads, pag_target="query_mean", **kw).images
    hh.transformer.fuse_qkv_projections()
    assert getattr(hh.transformer.transformer_blocks[0].attn, "fused_projections", False)
    try:
        got = hh("a cat", generator=gen(), pag_heads=heads, pag_target="query_mean", **kw).images
    finally:
        hh.transformer.unfuse_qkv_projections()
    assert (got - expected).abs().max() <= 1e-5


def test_fused_sd35_perturbed_rows_match_unfused_and_the_base_rows_keep_the_fused_processor():
    """diffusers' FusedJointAttnProcessor2_0 skips SD3.5's QK-norm, so a fused SD3.5 model differs from the unfused
    one whatever headhunter does. The perturbed rows (headhunter's joint processor, fused projections, QK-norm)
    equal the unfused model's perturbed rows; the base rows are the fused processor's (to batching round-off)."""
    _, inputs = tiny_transformer("sd3", batch=1)
    transformer = tiny_components("tiny-sd3.5")["transformer"].eval()
    layout = HeadLayout.from_transformer(transformer)
    plan = build_plan(layout, [{(0, 1): 1.0, (1, 0): 1.0, (2, 3): 0.5}], do_classifier_free_guidance=False)
    with torch.no_grad():
        with perturbed_heads(transformer, plan):
            unfused = transformer(**inputs).sample
        transformer.fuse_qkv_projections()
        try:
            stock_fused = transformer(**inputs).sample
            with perturbed_heads(transformer, plan):
                fused = transformer(**inputs).sample
        finally:
            transformer.unfuse_qkv_projections()
    assert (fused[1:] - unfused[1:]).abs().max() <= 1e-5
    assert (fused[:1] - stock_fused).abs().max() <= 1e-6
    assert (stock_fused - unfused[:1]).abs().max() > 1e-3  # (the fused processor really differs on SD3.5)


def test_the_users_backend_computes_the_perturbed_layers_attention(monkeypatch, sd3, flux):
    """The attention of perturbed layers goes through diffusers' dispatch, on the backend the user chose."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName("_native_math")
    real = _AttentionBackendRegistry._backends[name]
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs["query"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counting)
    sd3[0].transformer.set_attention_backend("_native_math")
    flux[0].transformer.set_attention_backend("_native_math")
    try:
        # SD3's stock processor calls SDPA itself and keeps the conditional row; headhunter's joint processor
        # dispatches the perturbed row of the perturbed layers
        sd3[0]("a cat", generator=gen(), pag_heads="L1H0,L2H1", **SD3_KW)
        assert calls == [1] * (2 * 2)  # two perturbed layers, two steps, the perturbed row
        calls.clear()
        flux[0]("a cat", generator=gen(), **FLUX_KW)
        stock = len(calls)
        calls.clear()
        flux[0]("a cat", generator=gen(), pag_heads="L3H0", **FLUX_KW)
        assert stock > 0 and len(calls) == stock and 2 in calls  # the same calls, the forked ones with both rows
    finally:
        sd3[0].transformer.reset_attention_backend()
        flux[0].transformer.reset_attention_backend()


def test_backend_chosen_by_user_is_kept(flux_components):
    hh = build_pipeline(HeadHunterFluxPipeline, tiny_components("tiny-flux"))
    hh.transformer.set_attention_backend("_native_math")
    layout = hh.head_layout
    plan = build_plan(layout, [{(1, 0): 1.0}], do_classifier_free_guidance=False)
    with perturbed_heads(hh.transformer, plan):
        processor = layout.attention(hh.transformer, 1).processor
        assert type(processor).__name__ == "SoftPAGProcessor"
        assert str(processor._attention_backend.value) == "_native_math"


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_model_cpu_offload_hooks_compose_with_forking(model):
    # device="cpu" makes diffusers install its accelerate offload hooks without an accelerator, so the hooked
    # transformer forward runs with headhunter's block hooks inside it.
    kw = SD3_KW if model == "tiny-sd3" else FLUX_KW
    cls = HeadHunterSD3Pipeline if model == "tiny-sd3" else HeadHunterFluxPipeline
    plain = build_pipeline(cls, tiny_components(model))
    expected = plain("a cat", generator=gen(), pag_heads="L1H1", **kw).images
    offloaded = build_pipeline(cls, tiny_components(model))
    offloaded.enable_model_cpu_offload(device="cpu")
    assert getattr(offloaded.transformer, "_hf_hook", None) is not None
    got = offloaded("a cat", generator=gen(), pag_heads="L1H1", **kw).images
    assert torch.equal(got, expected)


@pytest.mark.parametrize("offload", ["sequential", "group-block", "group-leaf"])
@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_sequential_and_group_offloading_compose_with_forking(model, offload):
    # On the CPU the onload device is the offload device, so this shows that the offloading hooks (accelerate's for
    # sequential offload, diffusers' HookRegistry for group offloading) and headhunter's compose and leave the image
    # as it was; that the plan's tensors follow the activations' device is tests/test_scope.py's device test.
    kw = SD3_KW if model == "tiny-sd3" else FLUX_KW
    cls = HeadHunterSD3Pipeline if model == "tiny-sd3" else HeadHunterFluxPipeline
    plain = build_pipeline(cls, tiny_components(model))
    expected = plain("a cat", generator=gen(), pag_heads="L1H1,L2", **kw).images
    offloaded = build_pipeline(cls, tiny_components(model))
    if offload == "sequential":  # what enable_sequential_cpu_offload does to each model, on the transformer alone
        # (on the CPU, accelerate 1.15 fails to reload transformers 5's CLIP weights; not headhunter's to mend)
        accelerate.cpu_offload(offloaded.transformer, execution_device=torch.device("cpu"))
    else:
        offloaded.transformer.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"),
                                                   offload_type=offload.split("-")[1] + "_level", num_blocks_per_group=1)
    got = offloaded("a cat", generator=gen(), pag_heads="L1H1,L2", **kw).images
    assert torch.equal(got, expected)
    assert headhunter.installed(offloaded.transformer) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none in CI)")
def test_model_cpu_offload_on_cuda():
    hh = build_pipeline(HeadHunterSD3Pipeline, tiny_components("tiny-sd3"))
    expected = hh("a cat", generator=gen(), pag_heads="L1H1", **SD3_KW).images
    hh.enable_model_cpu_offload()
    out = hh("a cat", generator=gen(), pag_heads="L1H1", **SD3_KW).images
    assert (out.cpu() - expected).abs().max() <= 1e-4


def test_lora_scale_reaches_perturbed_layers():
    """joint_attention_kwargs={"scale": s} on a LoRA'd transformer equals scale 1 with every LoRA B matrix times s."""
    peft = pytest.importorskip("peft")
    hh = build_pipeline(HeadHunterSD3Pipeline, tiny_components("tiny-sd3"))
    hh.transformer.add_adapter(peft.LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "add_q_proj",
                                                                                  "add_k_proj", "add_v_proj"]))
    torch.manual_seed(3)
    lora_b = [p for n, p in hh.transformer.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(std=0.5)
    kw = dict(pag_heads="L0,L1H2", pag_target="query_mean", **SD3_KW)
    at_half = hh("a cat", generator=gen(), joint_attention_kwargs={"scale": 0.5}, **kw).images
    at_one = hh("a cat", generator=gen(), **kw).images
    with torch.no_grad():
        for p in lora_b:
            p.mul_(0.5)
    halved_weights = hh("a cat", generator=gen(), **kw).images
    assert (at_half - halved_weights).abs().max() <= 1e-5
    assert (at_half - at_one).abs().max() > 1e-3
