"""A perturbation is scoped to its call, its thread and its layers: another thread's stock forward of the same
transformer is untouched, a user's processor keeps serving the unperturbed rows, a processor that never reaches
diffusers' dispatch is an error (never a branch equal to the conditional one), index tensors follow the
activations' device, and diffusers' module globals are its own again when the last call ends."""

import copy
import sys
import threading
import types

import pytest
import torch
from diffusers import FluxPipeline
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.transformers import transformer_flux
from torch.utils._python_dispatch import TorchDispatchMode

import headhunter
from headhunter import HeadLayout, build_plan, perturb, perturbed_heads
from headhunter.pipelines import HeadHunterSD3Pipeline
from headhunter.testing import build_pipeline, tiny_components, tiny_pipeline, tiny_transformer

FLUX_KW = dict(num_inference_steps=3, height=32, width=32, output_type="latent", max_sequence_length=48)


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


def test_a_stock_forward_in_another_thread_is_not_perturbed_inside_perturb():
    transformer, inputs = tiny_transformer("flux", batch=1)
    stock = _forward(transformer, inputs)
    with perturb(transformer, "L1H0,L2"):
        alone = _forward(transformer, inputs)
    assert not torch.equal(alone, stock)
    layout = HeadLayout.from_transformer(transformer)
    other, seen_installed = {}, []

    def stock_thread(started, finished):
        started.wait(timeout=30)
        seen_installed.append(headhunter.installed(transformer))
        other["out"] = _forward(transformer, inputs)  # a plain forward: no headhunter call, no lock
        finished.set()

    started, finished = threading.Event(), threading.Event()

    guided_thread = threading.current_thread()

    def in_the_middle(module, args, kwargs):  # the guided forward, stopped at its first perturbed layer
        if threading.current_thread() is guided_thread:
            started.set()
            assert finished.wait(timeout=30)

    thread = threading.Thread(target=stock_thread, args=(started, finished))
    thread.start()
    handle = layout.attention(transformer, 1).register_forward_pre_hook(in_the_middle, with_kwargs=True)
    try:
        with perturb(transformer, "L1H0,L2"):
            guided = _forward(transformer, inputs)
    finally:
        handle.remove()
        thread.join(timeout=30)
    assert seen_installed[0]  # the stand-ins were on the layers while the stock forward ran
    assert torch.equal(other["out"], stock)
    assert torch.equal(guided, alone)


def test_a_stock_pipeline_sharing_the_transformer_in_another_thread_is_untouched():
    """``FluxPipeline.from_pipe(hh)`` in another thread during a guided call: same batch size as the guided call's
    base rows, so a fork that looked at the batch size alone would append a row to it."""
    hh = tiny_pipeline("tiny-flux")
    # (its own scheduler: a scheduler keeps its step count, so two calls at once cannot share one)
    stock_pipe = FluxPipeline.from_pipe(hh, scheduler=copy.deepcopy(hh.scheduler))
    stock_pipe.set_progress_bar_config(disable=True)

    def stock_call():
        return stock_pipe("a lighthouse", generator=torch.Generator().manual_seed(1), **FLUX_KW).images

    def guided_call(**extra):
        return hh("a red fox", generator=torch.Generator().manual_seed(0), pag_heads="L1H0,L2", **FLUX_KW,
                  **extra).images

    stock_alone, guided_alone = stock_call(), guided_call()
    other = {}

    def stock_thread():
        other["images"] = stock_call()

    def meanwhile(pipe, step, timestep, tensors):  # the other call runs from start to end inside this one
        if step == 0:
            thread = threading.Thread(target=stock_thread)
            thread.start()
            thread.join(timeout=60)
        return {}

    guided = guided_call(callback_on_step_end=meanwhile)
    assert torch.equal(other["images"], stock_alone)
    assert torch.equal(guided, guided_alone)
    assert not torch.equal(guided_alone, hh("a red fox", generator=torch.Generator().manual_seed(0), **FLUX_KW).images)


class SpyProcessor(JointAttnProcessor2_0):
    """A user's processor (an attention store, say): the stock computation, recording the rows it serves."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.rows.append(hidden_states.shape[0])
        return super().__call__(attn, hidden_states, *args, **kwargs)


def test_a_users_processor_still_serves_the_unperturbed_rows_of_a_perturbed_sd3_layer():
    pipe = build_pipeline(HeadHunterSD3Pipeline, tiny_components("tiny-sd3"))
    kw = dict(num_inference_steps=2, height=32, width=32, guidance_scale=2.0, output_type="latent", pag_heads="L1H0")
    expected = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    spy = SpyProcessor()
    attention = pipe.transformer.transformer_blocks[1].attn
    attention.set_processor(spy)
    try:
        got = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        attention.set_processor(JointAttnProcessor2_0())
    assert spy.rows == [2, 2]  # uncond + cond rows of both steps; the perturbed row goes through headhunter's
    assert attention.processor is not spy and not headhunter.installed(pipe.transformer)
    assert torch.equal(got, expected)


def _bypassing_processor_class():
    """A third-party processor that computes FLUX attention with its own kernel reference: the stock processor's code
    bound to diffusers' dispatch function directly, so a perturbation can never reach it."""
    stock = transformer_flux.FluxAttnProcessor.__call__
    own_globals = dict(stock.__globals__, dispatch_attention_fn=dispatch_attention_fn)
    call = types.FunctionType(stock.__code__, own_globals, stock.__name__, stock.__defaults__, stock.__closure__)
    return type("OwnKernelProcessor", (transformer_flux.FluxAttnProcessor,), {"__call__": call,
                                                                             "__module__": __name__})


def test_a_processor_that_bypasses_the_dispatch_raises_instead_of_guiding_with_nothing():
    transformer, inputs = tiny_transformer("flux", batch=1)
    attention = HeadLayout.from_transformer(transformer).attention(transformer, 1)
    attention.set_processor(_bypassing_processor_class()())
    with pytest.raises(RuntimeError, match=r"L1 \(transformer_blocks.1.attn, processor OwnKernelProcessor\)"):
        with perturb(transformer, "L1H0"):
            _forward(transformer, inputs)
    assert headhunter.installed(transformer) == []
    hh = tiny_pipeline("tiny-flux")
    hh.transformer.transformer_blocks[1].attn.set_processor(_bypassing_processor_class()())
    with pytest.raises(RuntimeError, match="never called diffusers' dispatch_attention_fn"):
        hh("a cat", generator=torch.Generator().manual_seed(0), pag_heads="L1H0", **FLUX_KW)
    assert headhunter.installed(hh.transformer) == []


class MixedDevices(TorchDispatchMode):
    """Records every op whose tensor arguments live on more than one device (CPU scalars aside)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        devices = set()

        def visit(value):
            if isinstance(value, torch.Tensor) and not (value.device.type == "cpu" and value.dim() == 0):
                devices.add(value.device.type)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)

        for value in (*args, *(kwargs or {}).values()):
            visit(value)
        if len(devices) > 1:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_type", ["sd3", "flux", "chroma"])
def test_index_tensors_follow_the_activations_device(model_type):
    """Group offloading keeps the parameters on one device and computes on another: the plan (built on the
    execution device) must not be moved to the parameters', and its index tensors and u meet the activations where
    they are. Here the activations are on ``meta`` and the plan on the CPU; no op may mix the two."""
    transformer, inputs = tiny_transformer(model_type, batch=1)
    transformer = transformer.to("meta")
    inputs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    plan = build_plan(HeadLayout.from_transformer(transformer), [{(1, 0): 1.0, (2, 1): 0.5}],
                      do_classifier_free_guidance=False, device="cpu")
    with MixedDevices() as spy:
        with perturbed_heads(transformer, plan):
            forked = _forward(transformer, inputs)
        with perturb(transformer, "L1H0,L2H1@0.5"):
            _forward(transformer, inputs)
    assert forked.shape[0] == 2 and forked.device.type == "meta"
    assert spy.seen == []


def test_diffusers_globals_are_its_own_outside_calls_and_while_another_call_still_needs_them():
    module = sys.modules[transformer_flux.FluxAttnProcessor.__module__]
    first, inputs = tiny_transformer("flux", batch=1)
    second, _ = tiny_transformer("flux", batch=1, seed=1)
    assert module.dispatch_attention_fn is dispatch_attention_fn
    with perturb(first, "L1H0"):
        assert module.dispatch_attention_fn is not dispatch_attention_fn  # routed through headhunter in the call
        with perturb(second, "L0H1"):
            pass
        assert module.dispatch_attention_fn is not dispatch_attention_fn  # the first call still needs it
        _forward(first, inputs)
    assert module.dispatch_attention_fn is dispatch_attention_fn
    assert headhunter.installed(first) == [] and headhunter.installed(second) == []


def test_perturbed_heads_refuses_the_models_it_cannot_fork_inside():
    transformer, _ = tiny_transformer("qwenimage")
    plan = build_plan(HeadLayout.from_transformer(transformer), [{(0, 0): 1.0}], do_classifier_free_guidance=False)
    with pytest.raises(ValueError, match="use headhunter.perturb"):
        with perturbed_heads(transformer, plan):
            pass


def test_chroma_forks_carry_the_mask_under_gradient_checkpointing():
    """Under gradient checkpointing Chroma calls its double-stream blocks positionally, the mask in fifth place: the
    fork must carry it there too. Reference, under checkpointing as well (diffusers then leaves the mask out of the
    single-stream blocks, so the plain forward is no reference): the stock forward for the base rows, and each image
    perturbed on its own with ``perturb()`` for its perturbed row."""
    transformer, inputs = tiny_transformer("chroma", batch=2)
    text, image = inputs["encoder_hidden_states"].shape[1], inputs["hidden_states"].shape[1]
    mask = torch.ones(2, text + image)
    mask[0, text - 2 : text] = 0  # the first prompt is two tokens shorter: the rows' masks differ
    inputs["attention_mask"] = mask
    heads = [{(1, 0): 1.0, (3, 1): 1.0}, {(1, 1): 0.5}]
    plan = build_plan(HeadLayout.from_transformer(transformer), heads, do_classifier_free_guidance=False)

    def row(i):
        return {k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.shape[0] == 2 else v for k, v in inputs.items()}

    transformer.enable_gradient_checkpointing()
    transformer.train()  # diffusers checkpoints only while training and with grad enabled
    try:
        stock = transformer(**inputs, return_dict=False)[0].detach()
        with perturbed_heads(transformer, plan):
            forked = transformer(**inputs, return_dict=False)[0].detach()
        alone = []
        for i, image_heads in enumerate(heads):
            with perturb(transformer, {key: u for key, u in image_heads.items()}):
                alone.append(transformer(**row(i), return_dict=False)[0].detach())
    finally:
        transformer.disable_gradient_checkpointing()
        transformer.eval()
    assert forked.shape[0] == 4
    assert (forked[:2] - stock).abs().max() <= 1e-5
    assert (forked[2:] - torch.cat(alone)).abs().max() <= 1e-5
    assert (forked[2:] - stock).abs().max() > 1e-3  # the heads act


def test_a_guiders_armed_call_belongs_to_the_thread_that_armed_it():
    """The guider arms the perturbation for its denoiser's next call; another thread's call meanwhile is stock, and
    the armed call is still the arming thread's."""
    from headhunter.attention import around_next_call

    transformer, inputs = tiny_transformer("qwenimage", batch=1)
    stock = _forward(transformer, inputs)
    with perturb(transformer, "L0H1,L1"):
        perturbed = _forward(transformer, inputs)
    disarm = around_next_call(transformer, lambda: perturb(transformer, "L0H1,L1"))
    other = {}
    thread = threading.Thread(target=lambda: other.update(out=_forward(transformer, inputs)))
    thread.start()
    thread.join(timeout=30)
    assert headhunter.installed(transformer)  # still armed for this thread
    mine = _forward(transformer, inputs)
    disarm()
    assert torch.equal(other["out"], stock) and torch.equal(mine, perturbed)
    assert not torch.equal(stock, perturbed) and headhunter.installed(transformer) == []
