"""``HeadHunterGuidance`` attached to a whole call: one installation per call, per-row head sets, prefix reuse between
the conditional and the perturbed pass, no host reads, compiled without graph breaks.

References: ``headhunter.perturb`` running the full perturbed pass (itself tested against explicit attention in
``test_perturb.py``), and separate single-image calls of diffusers' modular pipelines with a bare guider."""

import logging
from pathlib import Path

import pytest
import torch
from test_guider import conversion_spy, embeddings, generate, modular

import headhunter
from headhunter.attention import perturb
from headhunter.attention.install import _sessions
from headhunter.attention.perturb import perturbation
from headhunter.guiders import HeadHunterGuidance
from headhunter.heads import HeadLayout
from headhunter.testing import TINY_MODULAR_CALL, tiny_modular_pipeline, tiny_transformer

logging.getLogger("diffusers").setLevel(logging.ERROR)
OURS = (str(Path(headhunter.__file__).parent), str(Path(headhunter.__file__).parent.parent / "pipelines"))


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out.sample


def _stack(value):
    return torch.stack(value) if isinstance(value, list) else value


# the last layer of each tiny transformer: every block before it is prefix (FLUX.2: both double-stream blocks and the
# first single-stream one)
LATE = {"flux2": 3, "qwenimage": 2, "zimage": 2, "wan": 2}


@pytest.mark.parametrize("model_type", sorted(LATE))
@pytest.mark.parametrize("first", ["late", "L1"])
def test_prefix_reuse_equals_the_full_perturbed_pass_and_skips_the_prefix(model_type, first):
    transformer, inputs = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    layer = LATE[model_type] if first == "late" else 1
    heads = f"L{layer}H1,L{layout.num_layers - 1}H0"
    with torch.no_grad():
        cond_ref = _stack(_output(transformer(**inputs)))
        with perturb(transformer, heads, target="query_mean"):
            full = _stack(_output(transformer(**inputs)))
        calls = []
        hooks = [layout.attention(transformer, n).register_forward_pre_hook(lambda m, a, n=n: calls.append(n))
                 for n in range(layout.num_layers)]
        try:
            with perturbation(transformer, heads, target="query_mean", share_prefix=True) as session:
                with session.branch(perturbed=False, prefix="record"):
                    cond = _stack(_output(transformer(**inputs)))
                recorded = list(calls)
                calls.clear()
                with session.branch(perturbed=True, prefix="replay"):
                    perturbed = _stack(_output(transformer(**inputs)))
        finally:
            for hook in hooks:
                hook.remove()
    assert recorded == list(range(layout.num_layers))
    assert calls == list(range(layer, layout.num_layers))  # the blocks before the first perturbed layer did not run
    assert torch.equal(cond, cond_ref)
    assert (perturbed - full).abs().max() <= 1e-5
    assert (full - cond_ref).abs().max() > 1e-4  # the heads do something
    assert headhunter.installed(transformer) == []


def test_a_replay_without_its_record_is_refused_and_a_failed_record_keeps_nothing():
    transformer, inputs = tiny_transformer("qwenimage")
    with perturbation(transformer, "L2H0", share_prefix=True) as session:
        with pytest.raises(RuntimeError, match="recorded"):
            with session.branch(perturbed=True, prefix="replay"):
                transformer(**inputs)
        with pytest.raises(KeyError):  # the forward fails after the prefix was recorded
            with session.branch(perturbed=False, prefix="record"):
                transformer(**inputs)
                raise KeyError("a fault after the record")
        with pytest.raises(RuntimeError, match="recorded"):
            with session.branch(perturbed=True, prefix="replay"):
                transformer(**inputs)
    assert headhunter.installed(transformer) == []


def _count_installs(monkeypatch, transformer):
    """Every set_processor call on the transformer's attention classes, by the processor's class name."""
    installs = []
    layout = HeadLayout.from_transformer(transformer)
    owner = next(c for c in type(layout.attention(transformer, 0)).__mro__ if "set_processor" in vars(c))
    original = owner.set_processor

    def spy(self, processor):
        installs.append(type(processor).__name__)
        return original(self, processor)

    monkeypatch.setattr(owner, "set_processor", spy)
    return installs


@pytest.mark.parametrize("model_type", ["qwenimage", "flux2"])
def test_one_installation_and_one_removal_per_call(model_type, monkeypatch):
    pipe = tiny_modular_pipeline(model_type)
    installs = _count_installs(monkeypatch, pipe.transformer)
    pipe(["a red fox", "a boat"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)], pag_heads="L1H0,L0H1",
         num_inference_steps=4, height=32, width=32, **TINY_MODULAR_CALL[model_type])
    # two perturbed layers: the stand-in goes on each once, the layer's own processor comes back once
    assert installs.count("SoftPAGProcessor") == 2 and len(installs) == 4, installs
    assert headhunter.installed(pipe.transformer) == []


def test_a_bare_guider_installs_per_perturbed_pass(monkeypatch):
    """Without attached() the guider cannot see the call; it installs around each perturbed pass (and keeps nothing)."""
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    installs = _count_installs(monkeypatch, transformer)
    generate("qwenimage", transformer, HeadHunterGuidance(heads="L1H0", pag_scale=2.0), inputs)  # 3 steps
    assert installs.count("SoftPAGProcessor") == 3 and len(installs) == 6


@pytest.mark.parametrize("model_type", ["flux2", "qwenimage", "zimage"])
def test_per_row_head_sets_in_one_call_equal_separate_single_image_calls(model_type):
    pipe = tiny_modular_pipeline(model_type)
    extra = TINY_MODULAR_CALL[model_type]
    prompts, seeds, heads = ["a red fox", "a blue boat on a lake", "a cat"], [4, 5, 6], ["L1H0", "", "L0,L1H1@0.5"]
    # (Qwen-Image's text step needs a negative prompt per prompt; FLUX.2 Klein base's takes none)
    negative = "negative_prompt" in {spec.name for spec in pipe.modular.blocks.inputs}
    guider = HeadHunterGuidance(heads=heads, pag_scale=2.0, guidance_scale=2.0)
    pipe.modular.update_components(guider=guider)
    with guider.attached(pipe.transformer, pipe.modular.scheduler):
        batched = pipe.modular(prompt=prompts, num_inference_steps=3, height=32, width=32,
                               generator=[torch.Generator().manual_seed(s) for s in seeds], output="latents",
                               **(dict(negative_prompt=["blurry"] * 3) if negative else {}), **extra)
    assert headhunter.installed(pipe.transformer) == []
    for row, (prompt, seed, head_set) in enumerate(zip(prompts, seeds, heads)):
        pipe.modular.update_components(guider=HeadHunterGuidance(heads=head_set, pag_scale=2.0, guidance_scale=2.0))
        alone = pipe.modular(prompt=prompt, num_inference_steps=3, height=32, width=32,
                             generator=torch.Generator().manual_seed(seed), output="latents",
                             **(dict(negative_prompt="blurry") if negative else {}), **extra)
        assert (batched[row] - alone[0]).abs().max() <= 1e-5, (row, head_set)
    unguided = HeadHunterGuidance(heads="", guidance_scale=2.0)
    pipe.modular.update_components(guider=unguided)
    plain = pipe.modular(prompt=prompts[0], num_inference_steps=3, height=32, width=32,
                         generator=torch.Generator().manual_seed(4), output="latents",
                         **(dict(negative_prompt="blurry") if negative else {}), **extra)
    assert (batched[0] - plain[0]).abs().max() > 1e-4  # the first image's heads change it


def test_the_wrong_number_of_rows_for_per_row_heads_is_an_error():
    transformer, inputs = tiny_transformer("qwenimage", batch=2)
    with pytest.raises(RuntimeError, match="3 perturbed ones"):
        with perturb(transformer, ["L0H1", "", "L1"]):
            transformer(**inputs)


@pytest.mark.parametrize("adaptive", [0.0, 0.001])
def test_an_attached_call_converts_no_tensor_in_its_steps(monkeypatch, adaptive):
    """A whole wrapped call (4 steps, CFG and perturbed passes): nothing from headhunter converts a tensor to a Python
    value, except the adaptive scale's one read of the schedule per call."""
    pipe = tiny_modular_pipeline("qwenimage")
    seen = conversion_spy(monkeypatch, OURS)
    pipe(["a red fox", "a boat"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
         pag_heads=["L1H0", "L0"], guidance_scale=2.0, pag_adaptive_scale=adaptive, num_inference_steps=4,
         height=32, width=32)
    assert len(seen) == (0 if adaptive == 0 else 1), seen


def test_the_adaptive_scale_from_the_schedule_equals_the_timestep_read_each_step():
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    guider = HeadHunterGuidance(heads="L1H0", pag_scale=2.0, pag_adaptive_scale=0.004)
    bare = generate("qwenimage", transformer, guider, inputs)
    pipe = modular("qwenimage", transformer, guider)
    with guider.attached(transformer, pipe.scheduler):
        attached = pipe(**inputs, height=32, width=32, num_inference_steps=3,
                        generator=torch.Generator().manual_seed(1), output="latents")
    assert (attached - bare).abs().max() <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_from_headhunter_in_an_attached_loop_on_cuda():
    """An attached guided loop on CUDA with sync debugging on: no synchronizing call is made from headhunter's code
    (the warning is attributed to the Python line that made the call)."""
    import warnings

    transformer, inputs = tiny_transformer("wan", batch=1)
    transformer = transformer.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    guider = HeadHunterGuidance(heads="L1H0,L2", pag_scale=2.0, share_prefix=True)
    with torch.no_grad(), guider.attached(transformer), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _guided_loop(transformer, inputs, guider, timestep_device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    ours = [w for w in caught if "synchroniz" in str(w.message) and str(w.filename).startswith(OURS)]
    assert ours == [], [(w.filename, w.lineno) for w in ours]


def _guided_loop(transformer, inputs, guider, steps=3, timestep_device="cpu"):
    """The modular loop's calls to a guider, on a transformer and its inputs (CFG off: conditional and perturbed)."""
    out = None
    timesteps = torch.linspace(900.0, 100.0, steps, device=timestep_device)
    for step in range(steps):
        guider.set_state(step, steps, timesteps[step])
        predictions = []
        for _ in range(guider.num_conditions):
            guider.prepare_models(transformer)
            predictions.append(transformer(**inputs)[0])
            guider.cleanup_models(transformer)
        out = guider.forward(*predictions[:1], None, *predictions[1:]).pred
    return out


@pytest.mark.parametrize("how", ["whole", "regional"])
def test_an_attached_guider_on_a_compiled_transformer_has_no_graph_break_and_a_graph_per_pass_kind(how):
    """fullgraph compilation (a graph break raises) of Wan's transformer, whole or block by block, under an attached
    guider with prefix reuse: equal to eager, and the graphs made do not grow with more steps or new heads on the
    same layers."""
    from torch._dynamo.testing import CompileCounter

    transformer, inputs = tiny_transformer("wan", batch=2)
    with torch.no_grad():
        reference = {}
        for heads in ("L1H0", "L1H1,L2H0"):
            guider = HeadHunterGuidance(heads=heads, pag_scale=2.0, share_prefix=1)
            with guider.attached(transformer):
                reference[heads] = _guided_loop(transformer, inputs, guider)
        torch._dynamo.reset()
        counter = CompileCounter()
        try:
            if how == "whole":
                compiled = torch.compile(transformer, backend=counter, fullgraph=True)
            else:
                for block in transformer.blocks:
                    block.compile(backend=counter, fullgraph=True)
                compiled = transformer
            counts = []
            for heads, steps in (("L1H0", 2), ("L1H0", 4), ("L1H1,L2H0", 3)):
                guider = HeadHunterGuidance(heads=heads, pag_scale=2.0, share_prefix=1)
                with guider.attached(compiled):
                    got = _guided_loop(compiled, inputs, guider, steps)
                if steps == 3:
                    assert (got - reference[heads]).abs().max() <= 1e-5
                counts.append(counter.frame_count)
            assert headhunter.installed(compiled) == []
        finally:
            if how == "regional":
                for block in transformer.blocks:
                    block._compiled_call_impl = None
            torch._dynamo.reset()
    assert counts[1] == counts[0] and counts[2] == counts[1], counts  # no new graph for more steps or new heads


@pytest.mark.parametrize("where", ["perturbed layer", "recording block", "second step", "decode"])
@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
def test_a_fault_in_an_attached_call_leaves_nothing_and_the_next_call_is_right(where, fault):
    """The wrapper's attached guider (one installation, prefix reuse): a fault anywhere in the call — in the perturbed
    pass's first perturbed layer, in the conditional pass while it records the prefix, in a later step, in the VAE —
    leaves nothing installed, and the next call equals the call made before the fault."""
    pipe = tiny_modular_pipeline("qwenimage")
    call = dict(generator=[torch.Generator().manual_seed(s) for s in (1, 2)], pag_heads=["L1H0", "L1"],
                guidance_scale=2.0, num_inference_steps=3, height=32, width=32, output_type="pt")
    before = pipe(["a red fox", "a boat"], **call).images
    layout = HeadLayout.from_transformer(pipe.transformer)
    seen, perturbing_now = [], []

    def raise_once(condition):
        def hook(*args):
            seen.append(1)
            if condition(len(seen)):
                perturbing_now.append(_sessions[pipe.transformer].active)
                raise fault("injected")
        return hook

    if where == "perturbed layer":  # L1's attention: conditional, unconditional, then the first perturbed pass
        handle = layout.attention(pipe.transformer, 1).register_forward_pre_hook(raise_once(lambda n: n == 3))
    elif where == "recording block":  # block 0 runs only in passes that record or run the prefix
        handle = layout.block(pipe.transformer, 0).register_forward_pre_hook(raise_once(lambda n: n == 1))
    elif where == "second step":
        handle = pipe.transformer.register_forward_pre_hook(raise_once(lambda n: n == 4))
    else:
        handle = pipe.modular.vae.decoder.register_forward_pre_hook(raise_once(lambda n: n == 1))
    try:
        with pytest.raises(fault, match="injected"):
            pipe(["a red fox", "a boat"], **{**call, "generator": [torch.Generator().manual_seed(s) for s in (1, 2)]})
    finally:
        handle.remove()
    assert perturbing_now == [where == "perturbed layer"]  # the fault hit the pass it names
    assert headhunter.installed(pipe.transformer) == []
    assert "set_state" not in vars(pipe._guider) and pipe._guider._attached is None
    after = pipe(["a red fox", "a boat"], **{**call, "generator": [torch.Generator().manual_seed(s) for s in (1, 2)]})
    assert torch.equal(after.images, before)
