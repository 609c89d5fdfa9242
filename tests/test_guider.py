"""``HeadHunterGuidance`` in diffusers' modular pipelines (tiny random-weight transformers, prompt embeddings given
directly): equal to a reference guider written here (its own pass list, the explicit-attention SoftPAG of
``explicit_attention.py``, the combination by hand), equal to ``HeadHunterSD3Pipeline`` on SD3, and with CFG off the
perturbed pass takes the conditional inputs."""

import importlib
import json
import logging

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput
from explicit_attention import explicit_perturbation

from headhunter.attention import SoftPAGProcessor
from headhunter.guiders import HeadHunterGuidance
from headhunter.heads import HeadLayout, save_preset
from headhunter.testing import tiny_pipeline, tiny_transformer

logging.getLogger("diffusers.guiders.guider_utils").setLevel(logging.ERROR)  # "guiders are experimental"

BLOCKS = {
    "sd3": ("stable_diffusion_3", "modular_blocks_stable_diffusion_3", "StableDiffusion3T2ICoreDenoiseStep"),
    "flux2": ("flux2", "modular_blocks_flux2_klein_base", "Flux2KleinBaseCoreDenoiseStep"),
    "qwenimage": ("qwenimage", "modular_blocks_qwenimage", "QwenImageCoreDenoiseStep"),
    "zimage": ("z_image", "modular_blocks_z_image", "ZImageCoreDenoiseStep"),
    "wan": ("wan", "modular_blocks_wan", "WanCoreDenoiseStep"),
}
SIZE = {"sd3": dict(height=32, width=32), "flux2": dict(height=32, width=32), "qwenimage": dict(height=32, width=32),
        "zimage": dict(height=64, width=64), "wan": dict(height=32, width=32, num_frames=5)}


class ReferenceGuider(BaseGuidance):
    """The guidance written out for the test: conditional, unconditional (g ≠ 1) and perturbed passes, the last on
    the conditional inputs with the explicit SoftPAG attention; ``v_u + g·(v_c − v_u) + w·(v_c − v̂)``."""

    _input_predictions = ["cond", "uncond", "perturbed"]

    @register_to_config
    def __init__(self, model_type: str = "sd3", per_layer: dict = None, target: str = "identity", w: float = 3.0,
                 g: float = 1.0):
        super().__init__(0.0, 1.0)
        self.model_type, self.per_layer, self.target, self.w, self.g = model_type, per_layer, target, w, g
        self.passes = [(0, "cond")] + ([(1, "uncond")] if g != 1 else []) + [(0, "perturbed")]
        self.context = None

    @property
    def num_conditions(self):
        return len(self.passes)

    @property
    def is_conditional(self):
        return True

    def prepare_inputs(self, data):
        return [self._prepare_batch(data, index, name) for index, name in self.passes]

    def prepare_inputs_from_block_state(self, data, input_fields):
        return [self._prepare_batch_from_block_state(input_fields, data, index, name) for index, name in self.passes]

    def prepare_models(self, denoiser):
        self._count_prepared += 1
        if self.passes[self._count_prepared - 1][1] == "perturbed":
            self.context = explicit_perturbation(self.model_type, denoiser, self.per_layer, self.target)
            self.context.__enter__()

    def cleanup_models(self, denoiser):
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None

    def forward(self, cond, uncond=None, perturbed=None):
        v = cond if uncond is None else uncond + self.g * (cond - uncond)
        return GuiderOutput(pred=v + self.w * (cond - perturbed), pred_cond=cond, pred_uncond=uncond)


def modular(model_type, transformer, guider, scheduler=None):
    where = BLOCKS[model_type]
    blocks = getattr(importlib.import_module(f"diffusers.modular_pipelines.{where[0]}.{where[1]}"), where[2])()
    pipe = blocks.init_pipeline()
    if scheduler is None:
        scheduler = (UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
                     if model_type == "wan" else FlowMatchEulerDiscreteScheduler())
    pipe.update_components(transformer=transformer, scheduler=scheduler, guider=guider)
    return pipe


def embeddings(model_type, transformer):
    g = torch.Generator().manual_seed(3)
    if model_type == "zimage":
        return dict(prompt_embeds=[torch.randn(6, 16, generator=g)], negative_prompt_embeds=[torch.randn(4, 16, generator=g)])
    dim = 16
    inputs = dict(prompt_embeds=torch.randn(1, 6, dim, generator=g), negative_prompt_embeds=torch.randn(1, 6, dim, generator=g))
    if model_type == "qwenimage":
        mask = torch.ones(1, 6, dtype=torch.long)
        inputs.update(prompt_embeds_mask=mask, negative_prompt_embeds_mask=mask)
    return inputs


def generate(model_type, transformer, guider, inputs):
    pipe = modular(model_type, transformer, guider)
    return pipe(**inputs, **SIZE[model_type], num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                output="latents")


@pytest.mark.parametrize("model_type", ["flux2", "qwenimage", "zimage", "wan"])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_the_guider_equals_a_hand_written_reference(model_type, guidance_scale):
    transformer, _ = tiny_transformer(model_type)
    layout = HeadLayout.from_transformer(transformer)
    last = layout.num_layers - 1
    per_layer = {0: torch.tensor([0.0, 0.6]), last: torch.tensor([1.0, 1.0])}
    inputs = embeddings(model_type, transformer)
    ours = generate(model_type, transformer, HeadHunterGuidance(
        heads=f"L0H1@0.6,L{last}", pag_scale=2.0, guidance_scale=guidance_scale, pag_target="uniform"), inputs)
    reference = generate(model_type, transformer, ReferenceGuider(model_type, per_layer, "uniform", 2.0, guidance_scale),
                         inputs)
    unguided = generate(model_type, transformer, HeadHunterGuidance(heads="", guidance_scale=guidance_scale), inputs)
    assert (ours - reference).abs().max() <= 1e-5
    assert (ours - unguided).abs().max() > 1e-3  # the guidance acts (the comparison above is not vacuous)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_on_sd3_the_guider_equals_headhunter_sd3_pipeline(guidance_scale):
    pipe = tiny_pipeline("tiny-sd3")
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt("a red fox", "a red fox", None, negative_prompt="blurry",
                                                             do_classifier_free_guidance=True)
    latents = torch.randn(1, pipe.transformer.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    embeds = dict(prompt_embeds=cond, pooled_prompt_embeds=pooled)
    if guidance_scale != 1:
        embeds.update(negative_prompt_embeds=uncond, negative_pooled_prompt_embeds=uncond_pooled)
    guider = HeadHunterGuidance(heads="L1H0,L2@0.5", pag_scale=2.0, guidance_scale=guidance_scale, pag_target="query_mean")
    schedule = dict(num_inference_steps=3)
    ours = modular("sd3", pipe.transformer, guider, pipe.scheduler)(**embeds, latents=latents.clone(), **schedule, height=32, width=32,
                                                    output="latents")
    expected = pipe(**embeds, latents=latents.clone(), **schedule, height=32, width=32,
                    guidance_scale=guidance_scale, pag_heads="L1H0,L2@0.5", pag_scale=2.0, pag_target="query_mean",
                    output_type="latent").images
    assert (ours - expected).abs().max() <= 1e-5


def test_with_cfg_off_the_perturbed_pass_takes_the_conditional_inputs():
    """diffusers' PAG guider runs its perturbed pass on the second input (the negative prompt) when CFG is off; the
    paper's guidance needs v̂ of the *conditional* inputs."""
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    contexts, perturbed = [], []
    record_inputs = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    # inside the forward (the guider arms the perturbation for the call, not before it): is layer 0 perturbed?
    record_pass = transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda block, args: perturbed.append(isinstance(block.attn.processor, SoftPAGProcessor)))
    try:
        generate("qwenimage", transformer, HeadHunterGuidance(heads="L0", pag_scale=2.0, guidance_scale=1.0), inputs)
    finally:
        record_inputs.remove()
        record_pass.remove()
    assert perturbed == [False, True] * 3  # conditional, perturbed; no unconditional pass
    assert len(contexts) == 6 and all(torch.equal(context, inputs["prompt_embeds"]) for context in contexts)


def test_interval_and_adaptive_scale_decide_when_the_perturbed_pass_runs():
    guider = HeadHunterGuidance(heads="L0", pag_scale=2.0, start=0.5, stop=1.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(1000.0))
    assert guider.num_conditions == 1  # outside [start, stop): no perturbed pass
    guider.set_state(step=2, num_inference_steps=4, timestep=torch.tensor(1000.0))
    assert guider.num_conditions == 2
    adaptive = HeadHunterGuidance(heads="L0", pag_scale=2.0, pag_adaptive_scale=0.01, guidance_scale=5.0)
    adaptive.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(900.0))
    assert adaptive.num_conditions == 3  # w_t = 2 − 0.01·100 = 1
    v_c, v_u, v_p = torch.full((1,), 1.0), torch.full((1,), 0.0), torch.full((1,), 0.5)
    assert adaptive.forward(v_c, v_u, v_p).pred.item() == pytest.approx(0 + 5 * 1 + 1.0 * 0.5)
    adaptive.set_state(step=3, num_inference_steps=4, timestep=torch.tensor(500.0))
    assert adaptive.num_conditions == 2  # w_t = max(0, 2 − 5) = 0: CFG only


def test_saved_loaded_and_made_from_a_search_preset(tmp_path):
    guider = HeadHunterGuidance(heads="L13H17@0.5,L2", pag_scale=4.0, guidance_scale=2.0, pag_softness=0.75,
                                pag_target="query_mean", start=0.1, stop=0.9)
    guider.save_pretrained(tmp_path / "guider")
    saved = json.loads((tmp_path / "guider" / "guider_config.json").read_text())
    assert saved["heads"] == "L13H17@0.5,L2" and saved["_class_name"] == "HeadHunterGuidance"
    loaded = HeadHunterGuidance.from_pretrained(tmp_path / "guider")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(guider.config) and loaded.heads == guider.heads
    save_preset(tmp_path / "selected.json", "L3H1,L4H0", model="tiny-sd3", pag_scale=2.5, pag_softness=0.5)
    preset = HeadHunterGuidance.from_preset(tmp_path / "selected.json", guidance_scale=4.5)
    assert (str(preset.heads), preset.pag_scale, preset.pag_softness, preset.guidance_scale) == ("L3H1,L4H0", 2.5, 0.5, 4.5)
    for bad in (dict(pag_scale=-1.0), dict(pag_softness=2.0), dict(pag_target="nope"), dict(heads="L1X")):
        with pytest.raises(ValueError):
            HeadHunterGuidance(**bad)


def test_guidance_scale_at_or_below_one_is_no_cfg_as_in_the_pipelines():
    """diffusers' guiders would run CFG at g = 0 (v = v_u); headhunter's pipelines and this guider read g ≤ 1 as off."""
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    forwards = []
    handle = transformer.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        off = generate("qwenimage", transformer, HeadHunterGuidance(heads="L0", pag_scale=2.0, guidance_scale=1.0),
                       inputs)
        passes_off = len(forwards)
        zero = generate("qwenimage", transformer, HeadHunterGuidance(heads="L0", pag_scale=2.0, guidance_scale=0.0),
                        inputs)
    finally:
        handle.remove()
    assert passes_off == 3 * 2 and len(forwards) == 2 * passes_off  # conditional + perturbed, 3 steps, no uncond pass
    assert torch.equal(zero, off)


@pytest.mark.parametrize("how", ["assigned", "in-place"])
def test_the_guider_on_a_compiled_transformer_equals_eager_and_leaves_nothing(how):
    """The guider arms the perturbation where the call enters compiled code (an OptimizedModule's forward, an in-place
    compiled module's compiled call), so the transformer is entered with the stand-ins already on its layers. (Wan:
    the tiny Qwen-Image, FLUX.2 and Z-Image transformers do not compile fullgraph in diffusers 0.42 even unguided.)"""
    import headhunter

    transformer, _ = tiny_transformer("wan")
    inputs = embeddings("wan", transformer)
    guider = HeadHunterGuidance(heads="L0H1,L1", pag_scale=2.0, guidance_scale=1.0)
    eager = generate("wan", transformer, guider, inputs)
    torch._dynamo.reset()
    try:
        if how == "assigned":
            compiled = torch.compile(transformer, backend="eager", fullgraph=True)
        else:
            transformer.compile(backend="eager", fullgraph=True)
            compiled = transformer
        got = generate("wan", compiled, guider, inputs)
        assert headhunter.installed(compiled) == [] and headhunter.installed(transformer) == []
    finally:
        torch._dynamo.reset()
    assert (got - eager).abs().max() <= 1e-5
    assert (eager - generate("wan", transformer, HeadHunterGuidance(heads="", guidance_scale=1.0), inputs)).abs().max() > 1e-4


#: Tensor methods that hand a value to Python (on an accelerator: a device sync)
CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy")


def conversion_spy(monkeypatch, roots, names=CONVERSIONS):
    """Record every call of ``names`` on tensors made directly from a file under ``roots``: (name, file, line)."""
    import traceback

    seen = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(roots):
                seen.append((name, caller.filename, caller.lineno))
            return original(self, *args, **kwargs)

        return wrapper

    for name in names:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    return seen


@pytest.mark.parametrize("adaptive", [0.0, 0.001])
def test_the_guider_reads_the_timestep_back_at_most_once_a_step(monkeypatch, adaptive):
    """Every tensor-to-Python conversion during a guided loop is recorded with its caller: none comes from headhunter
    with a constant scale, and at most one a step (the timestep, for the adaptive scale) otherwise."""
    from pathlib import Path

    import headhunter

    ours = str(Path(headhunter.__file__).parent)
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    seen = conversion_spy(monkeypatch, (ours,), CONVERSIONS + ("cpu",))
    guider = HeadHunterGuidance(heads="L0H1", pag_scale=2.0, guidance_scale=2.0, pag_adaptive_scale=adaptive)
    generate("qwenimage", transformer, guider, inputs)  # 3 steps, 3 passes each
    assert len(seen) == (0 if adaptive == 0 else 3), seen


def test_the_guided_loop_inspects_no_signature_of_headhunters_own():
    """Installing the stand-ins reads each processor class's signature once for the process, not once per pass."""
    import inspect
    import traceback
    from pathlib import Path

    import headhunter

    ours = str(Path(headhunter.__file__).parent)
    transformer, _ = tiny_transformer("qwenimage")
    inputs = embeddings("qwenimage", transformer)
    guider = HeadHunterGuidance(heads="L0H1,L1", pag_scale=2.0)
    generate("qwenimage", transformer, guider, inputs)  # the first call may read the classes' signatures
    seen, signature = [], inspect.signature

    def spy(*args, **kwargs):
        caller = traceback.extract_stack(limit=2)[0]
        if caller.filename.startswith(ours):
            seen.append((caller.filename, caller.lineno))
        return signature(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inspect, "signature", spy)
        generate("qwenimage", transformer, guider, inputs)  # 3 steps, a perturbed pass in each
    assert seen == []
