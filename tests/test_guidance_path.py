"""The guidance machinery inside the denoising loop: installed once per call, no host–device synchronisation of its
own, fp32 where bf16 loses the signal, context parallelism refused where a target needs the whole sequence, and the
FLUX step-end callback's embeddings used on guided steps."""

import traceback
import types
from pathlib import Path

import pytest
import torch

import headhunter
import headhunter.pipelines
from headhunter.testing import tiny_pipeline

SD3 = dict(num_inference_steps=4, height=32, width=32, guidance_scale=1.0, output_type="latent")
FLUX = dict(num_inference_steps=3, height=32, width=32, output_type="latent", max_sequence_length=48)
OURS = [str(Path(headhunter.__file__).parent), str(Path(headhunter.pipelines.__file__).parent)]


def test_processors_and_hooks_are_installed_once_per_call(monkeypatch):
    pipe = tiny_pipeline("tiny-sd3")
    processors, hooks = [], []
    original_set = type(pipe.transformer.transformer_blocks[0].attn).set_processor
    original_register = torch.nn.Module.register_forward_pre_hook
    monkeypatch.setattr(type(pipe.transformer.transformer_blocks[0].attn), "set_processor",
                        lambda self, p: (processors.append(type(p).__name__), original_set(self, p))[1])
    monkeypatch.setattr(torch.nn.Module, "register_forward_pre_hook",
                        lambda self, *a, **k: (hooks.append(type(self).__name__), original_register(self, *a, **k))[1])
    pipe("a cat", generator=torch.Generator().manual_seed(0), pag_heads="L1H0,L2", pag_interval=(0.0, 0.5), **SD3)
    # 2 perturbed layers: installed once and restored once, for 4 steps (2 of them outside the interval)
    assert processors == ["SoftPAGProcessor"] * 2 + ["JointAttnProcessor2_0"] * 2
    assert sorted(hooks) == sorted(["JointTransformerBlock"] * 3 + ["AdaLayerNormContinuous"])


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("adaptive", [0.0, 0.001])
def test_the_loop_reads_nothing_back_from_the_device_on_our_account(monkeypatch, model, adaptive):
    """Every tensor-to-Python conversion during the denoising loop is recorded with its caller; none may come from
    headhunter (its core or its pipelines' lines). On CUDA the same is checked with torch's sync debug mode."""
    pipe = tiny_pipeline(model)
    kw = dict(SD3 if model == "tiny-sd3" else FLUX)
    if model == "tiny-flux":
        kw.update(true_cfg_scale=2.0, negative_prompt=["blur", "blur"])
    recording, seen = [False], []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if recording[0]:
                caller = traceback.extract_stack(limit=2)[0]
                seen.append((name, caller.filename, caller.lineno, caller.line))
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    forwards = []

    def arm(*args):
        recording[0] = True
        forwards.append(1)

    start = pipe.transformer.register_forward_pre_hook(arm)
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: (recording.__setitem__(0, False), decode(*a, **k))[1])
    try:
        pipe(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
             pag_heads=["L1H0,L2", None], pag_adaptive_scale=adaptive, pag_interval=(0.0, 0.7),
             **{**kw, "output_type": "np"})
    finally:
        start.remove()
    assert forwards and not recording[0]  # the spies were armed during the loop, and disarmed at the decode
    ours = [s for s in seen if any(s[1].startswith(folder) for folder in OURS)]
    assert not ours, ours


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.set_sync_debug_mode needs CUDA")
@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_no_sync_of_ours_on_cuda(model):
    """torch's sync debug mode warns at every host–device synchronisation, from the Python line that caused it; none
    may be headhunter's during a guided generation (diffusers' own, e.g. the scheduler's first step, may be)."""
    import warnings

    pipe = tiny_pipeline(model).to("cuda")
    kw = dict(SD3 if model == "tiny-sd3" else FLUX, pag_heads="L1H0,L2", pag_adaptive_scale=0.001, output_type="np")
    pipe("a cat", **kw)  # warm-up: lazy initialisation is not the loop
    # watch the denoising loop only: from the first transformer forward to the VAE decode
    start = pipe.transformer.register_forward_pre_hook(lambda *args: torch.cuda.set_sync_debug_mode("warn"))
    decode = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: (torch.cuda.set_sync_debug_mode(0), decode(*a, **k))[1]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe("a cat", **kw)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        start.remove()
        pipe.vae.decode = decode
    ours = [(w.filename, w.lineno) for w in caught if "synchroniz" in str(w.message)
            and any(w.filename.startswith(folder) for folder in OURS)]
    assert not ours, ours


def test_bf16_guidance_combination_is_closer_to_exact_than_the_naive_one():
    """w = 8 on two nearly equal bf16 predictions: the exact result (fp64 from the same bf16 inputs) against ours
    (combined in fp32, cast once) and the naive bf16 arithmetic."""
    from headhunter.guidance import guided_prediction

    torch.manual_seed(0)
    v_u = torch.randn(4, 16, 64, 64).bfloat16()
    v_c = (v_u.double() + 0.3 * torch.randn_like(v_u, dtype=torch.float64)).bfloat16()
    v_p = (v_c.double() + 0.01 * torch.randn_like(v_c, dtype=torch.float64)).bfloat16()
    exact = v_u.double() + 4.0 * (v_c.double() - v_u.double()) + 8.0 * (v_c.double() - v_p.double())
    ours = guided_prediction(v_c, v_p, 8.0, v_u, 4.0)
    naive = v_u + 4.0 * (v_c - v_u) + 8.0 * (v_c - v_p)
    assert ours.dtype == torch.bfloat16
    error = lambda x: (x.double() - exact).abs().mean().item()  # noqa: E731
    assert error(ours) < error(naive), (error(ours), error(naive))


@pytest.mark.parametrize("target", ["query_mean", "max"])
def test_bf16_target_logits_are_closer_to_exact_than_the_naive_ones(monkeypatch, target):
    """Over 4096 keys (a 1024² SD3 image), logits in bf16 blur the softmax (query_mean) and flip near-ties (max)."""
    import headhunter.attention.targets as targets

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4096, 2, 64).bfloat16() for _ in range(3))
    exact = targets.target_values(q.double(), k.double(), v.double(), target)
    ours = targets.target_values(q, k, v, target)
    monkeypatch.setattr(targets, "_wide", lambda x: x)
    naive = targets.target_values(q, k, v, target)
    error = lambda x: (x.double() - exact).abs().mean().item()  # noqa: E731
    assert error(ours) < error(naive), (error(ours), error(naive))


@pytest.mark.parametrize("target,scope,ok", [("identity", "joint", True), ("uniform", "joint", False),
                                              ("query_mean", "joint", False), ("max", "joint", False),
                                              ("identity", "image", False)])
def test_context_parallel_refuses_targets_that_need_the_whole_sequence(target, scope, ok):
    from headhunter.attention import build_plan, perturbed_heads

    pipe = tiny_pipeline("tiny-sd3")
    for block in pipe.transformer.transformer_blocks:  # what enable_parallelism leaves on every processor
        block.attn.processor._parallel_config = types.SimpleNamespace(context_parallel_config=None)
    if ok:  # T·V = V is row-local: each rank's slice suffices, the processors install
        plan = build_plan(pipe.head_layout, [{(1, 0): 1.0}], do_classifier_free_guidance=False, target=target,
                          scope=scope)
        with perturbed_heads(pipe.transformer, plan):
            assert type(pipe.transformer.transformer_blocks[1].attn.processor).__name__ == "SoftPAGProcessor"
    else:
        with pytest.raises(ValueError, match="needs the whole sequence"):
            pipe("a cat", **dict(SD3, pag_heads="L1", pag_target=target, pag_scope=scope))
    assert all(type(b.attn.processor).__name__ == "JointAttnProcessor2_0" for b in pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_flux_callback_embeddings_reach_guided_steps(cfg):
    pipe = tiny_pipeline("tiny-flux")
    replacement = {}
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()), with_kwargs=True)

    def swap(pipe_, step, t, tensors):
        if step == 0:
            replacement["embeds"] = torch.randn_like(tensors["prompt_embeds"])
            return {"prompt_embeds": replacement["embeds"]}
        return {}

    try:
        pipe("a cat", negative_prompt="blur", true_cfg_scale=cfg, pag_heads="L1H0", callback_on_step_end=swap,
             callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **FLUX)
    finally:
        hook.remove()
    later = seen[1:]  # the forwards of steps 1 and 2, all guided
    assert later and all(torch.equal(x[-1:], replacement["embeds"]) for x in later)


def test_skip_layer_guidance_pass_runs_unperturbed_beside_the_perturbation():
    """SD3's skip-layer guidance calls the transformer a second time per step with only the conditional rows; the
    installed processors leave that pass alone."""
    pipe = tiny_pipeline("tiny-sd3")
    kw = dict(SD3, guidance_scale=3.0, pag_heads="L1H0,L2")
    slg = dict(skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    rows = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: rows.append(k["hidden_states"].shape[0]), with_kwargs=True)
    try:
        with_slg = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw, **slg).images
    finally:
        hook.remove()
    without = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    assert 1 in rows and 2 in rows  # the batched [uncond, cond] pass and the skip-layer pass
    assert not torch.equal(with_slg, without)
