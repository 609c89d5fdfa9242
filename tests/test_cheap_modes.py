"""The cheap modes against references that apply their rules by hand: ``pag_reuse = k`` (the perturbed branch on guided
steps 0, k, 2k, ..., the last ``v_c − v̂`` reused between) and ``pag_mode="uncond"`` (the unconditional branch
perturbed, ``v = v̂_u + g·(v_c − v̂_u)``), in the three pipelines (explicit attention maps, every branch of every image
separately: ``reference.py``) and in the guider on a modular pipeline (``test_guider.ReferenceGuider``'s explicit
attention, with the rule written out below). fp32, max abs difference ≤ 1e-5 on final latents."""

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from diffusers.guiders.guider_utils import GuiderOutput
from explicit_attention import explicit_perturbation
from reference import reference_chroma, reference_flux, reference_sd3
from test_exactness import _softness
from test_guider import SIZE, ReferenceGuider, embeddings, modular

import headhunter
from headhunter.guidance import passes_per_step
from headhunter.guiders import HeadHunterGuidance
from headhunter.heads import HeadLayout
from headhunter.pipelines import HeadHunterChromaPipeline, HeadHunterFluxPipeline, HeadHunterSD3Pipeline
from headhunter.testing import (TINY_MODULAR_CALL, build_pipeline, tiny_components, tiny_modular_pipeline,
                                tiny_transformer)

TOL = 1e-5
PROMPTS = ["a red fox in snow", "a blue cube", "an old lighthouse on a cliff at dusk"]
SEEDS = [3, 5, 4]
STEPS, INTERVAL = 5, (0.2, 1.0)  # step 0 unguided; steps 1-4 guided
SD3_HEADS = ["L1H2@0.5,L2H0", "", "L0H1-2@0.75,L2"]  # the middle image perturbs nothing
FLUX_HEADS = ["L1H0@0.5,L3H1", "", "L0H1@0.8,L2"]
NEGATIVE = ["blurry", "grainy", "low quality, dark"]
# rows the last block hands to norm_out in each transformer call, written out for 3 images, steps 0-4 (the first
# guided step is step 1): two perturbed rows (images 0 and 2) on the steps that run the perturbed branch
PERTURBED_AT = {2: (1, 3), 3: (1, 4)}


@pytest.fixture(scope="module")
def pipes():
    return {
        "sd3": build_pipeline(HeadHunterSD3Pipeline, tiny_components("tiny-sd3")),
        "flux": build_pipeline(HeadHunterFluxPipeline, tiny_components("tiny-flux", num_layers=2, num_single_layers=2)),
        "chroma": build_pipeline(HeadHunterChromaPipeline,
                                 tiny_components("tiny-chroma", num_layers=2, num_single_layers=2)),
    }


def _call(pipe, model, cfg, **pag):
    kwargs = dict(num_inference_steps=STEPS, height=32, width=32, output_type="latent", pag_scale=2.0,
                  pag_interval=INTERVAL, generator=[torch.Generator().manual_seed(s) for s in SEEDS],
                  pag_heads=SD3_HEADS if model == "sd3" else FLUX_HEADS)
    if model == "sd3":
        kwargs.update(guidance_scale=2.5 if cfg else 1.0, negative_prompt=NEGATIVE if cfg else None)
    elif model == "flux":
        kwargs.update(max_sequence_length=48, true_cfg_scale=2.0 if cfg else 1.0,
                      negative_prompt=NEGATIVE if cfg else None)
    else:
        kwargs.update(max_sequence_length=48, guidance_scale=2.0 if cfg else 1.0, negative_prompt=NEGATIVE)
    return pipe(PROMPTS, **{**kwargs, **pag}).images


def _reference(pipe, model, cfg, i, **rule):
    heads = (SD3_HEADS if model == "sd3" else FLUX_HEADS)[i]
    softness = _softness(heads, num_heads=4 if model == "sd3" else 2) if heads else {}
    common = dict(steps=STEPS, pag_scale=2.0, **{"interval": INTERVAL, **rule})
    if model == "sd3":
        return reference_sd3(pipe, PROMPTS[i], SEEDS[i], softness, guidance_scale=2.5 if cfg else 1.0,
                             negative_prompt=NEGATIVE[i] if cfg else None, **common)
    if model == "flux":
        return reference_flux(pipe, PROMPTS[i], SEEDS[i], softness, true_cfg_scale=2.0 if cfg else 1.0,
                              negative_prompt=NEGATIVE[i] if cfg else None, **common)
    return reference_chroma(pipe, PROMPTS[i], SEEDS[i], softness, guidance_scale=2.0 if cfg else 1.0,
                            negative_prompt=NEGATIVE[i], **common)


def _rows_per_call(pipe):
    rows = []
    handle = pipe.transformer.norm_out.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    return rows, handle


@pytest.mark.parametrize("model", ["sd3", "flux", "chroma"])
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("reuse", [2, 3])
def test_reuse_equals_the_rule_applied_by_hand_and_reuse_steps_carry_no_perturbed_rows(pipes, model, cfg, reuse):
    pipe = pipes[model]
    rows, handle = _rows_per_call(pipe)
    try:
        out = _call(pipe, model, cfg, pag_reuse=reuse)
    finally:
        handle.remove()
    for i in range(len(PROMPTS)):
        ref = _reference(pipe, model, cfg, i, reuse=reuse)
        diff = (out[i : i + 1] - ref).abs().max().item()
        assert diff <= TOL, f"image {i}: max abs diff {diff}"
    # the rule matters: the exact loop (reuse 1) is far from it
    exact = _reference(pipe, model, cfg, 0, reuse=1)
    assert (out[:1] - exact).abs().max().item() > 100 * TOL
    images = len(PROMPTS)
    base = 2 * images if cfg else images
    # step 0 is outside the interval: the stock step (FLUX.1 and Chroma run CFG's two branches as two calls there)
    expected = [images, images] if cfg and model != "sd3" else [base]
    expected += [base + 2 if step in PERTURBED_AT[reuse] else base for step in range(1, STEPS)]
    assert rows == expected


@pytest.mark.parametrize("model", ["sd3", "flux", "chroma"])
def test_reuse_one_is_the_exact_call_bit_for_bit(pipes, model):
    pipe = pipes[model]
    default = _call(pipe, model, True)
    assert torch.equal(_call(pipe, model, True, pag_reuse=1, pag_mode="cond"), default)
    ref = _reference(pipe, model, True, 2)
    assert (default[2:] - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("model", ["sd3", "flux", "chroma"])
def test_uncond_mode_equals_its_formula_by_hand_at_cfgs_two_branches(pipes, model):
    pipe = pipes[model]
    rows, handle = _rows_per_call(pipe)
    try:
        out = _call(pipe, model, True, pag_mode="uncond")
    finally:
        handle.remove()
    for i in range(len(PROMPTS)):
        ref = _reference(pipe, model, True, i, mode="uncond")
        diff = (out[i : i + 1] - ref).abs().max().item()
        assert diff <= TOL, f"image {i}: max abs diff {diff}"
    plain_cfg = _call(pipe, model, True, pag_heads=None)
    assert (out[:1] - plain_cfg[:1]).abs().max().item() > 100 * TOL  # the perturbation acts
    # an image without heads gets plain CFG (FLUX.1 and Chroma run its two branches as one batched call here)
    assert (out[1:2] - plain_cfg[1:2]).abs().max().item() <= TOL
    images = len(PROMPTS)
    assert rows[-(STEPS - 1):] == [2 * images] * (STEPS - 1)  # guided steps: CFG's two branches, nothing more


@pytest.mark.parametrize("bad,message", [
    (dict(pag_reuse=0), "pag_reuse must be a whole number >= 1"),
    (dict(pag_reuse=1.5), "pag_reuse must be a whole number >= 1"),
    (dict(pag_reuse="2"), "pag_reuse must be a whole number >= 1"),
    (dict(pag_reuse=True), "pag_reuse must be a whole number >= 1"),
    (dict(pag_mode="third"), "pag_mode must be one of 'cond', 'uncond'"),
    (dict(pag_mode="uncond", pag_reuse=2), "pag_reuse applies to the separate perturbed pass"),
    (dict(pag_mode="uncond", guidance_scale=1.0), "pag_mode='uncond' perturbs the unconditional pass"),
])
def test_bad_cheap_mode_values_are_one_line_errors(pipes, bad, message):
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="latent", pag_heads="L1H0",
                  guidance_scale=2.0)
    with pytest.raises(ValueError, match=message) as caught:
        pipes["sd3"]("a fox", **{**kwargs, **bad})
    assert "\n" not in str(caught.value)
    guider_bad = {k: v for k, v in bad.items()}
    with pytest.raises(ValueError, match=message):
        HeadHunterGuidance(heads="L1H0", **{"guidance_scale": 2.0, **guider_bad})


class RuleGuider(ReferenceGuider):
    """ReferenceGuider with the cheap modes' rules written out: guided steps are those with start <= i/n < stop;
    ``reuse`` = k runs the perturbed pass on guided steps 0, k, 2k, ... and reuses the last ``v_c − v̂``;
    ``mode="uncond"`` perturbs the unconditional pass on guided steps and returns ``v̂_u + g·(v_c − v̂_u)``."""

    def __init__(self, model_type, per_layer, target, w, g, reuse=1, mode="cond", interval=(0.0, 1.0)):
        super().__init__(model_type, per_layer, target, w, g)
        self.reuse, self.mode, self.interval = reuse, mode, interval
        self.guided, self.delta = 0, None

    def set_state(self, step, num_inference_steps, timestep):
        super().set_state(step, num_inference_steps, timestep)
        on = self.interval[0] <= step / num_inference_steps < self.interval[1]
        self.perturb_now = on and self.mode == "cond" and self.guided % self.reuse == 0
        self.perturb_uncond = on and self.mode == "uncond"
        self.on = on
        self.guided += on
        uncond = [(1, "uncond")] if self.g != 1 else []
        self.passes = [(0, "cond")] + uncond + ([(0, "perturbed")] if self.perturb_now else [])

    def prepare_models(self, denoiser):
        self._count_prepared += 1
        name = self.passes[self._count_prepared - 1][1]
        if name == "perturbed" or name == "uncond" and self.perturb_uncond:
            self.context = explicit_perturbation(self.model_type, denoiser, self.per_layer, self.target)
            self.context.__enter__()

    def forward(self, cond, uncond=None, perturbed=None):
        v = cond if uncond is None else uncond + self.g * (cond - uncond)
        if perturbed is not None:
            self.delta = cond - perturbed
        if self.on and self.mode == "cond":
            v = v + self.w * self.delta
        return GuiderOutput(pred=v, pred_cond=cond, pred_uncond=uncond)


@pytest.mark.parametrize("model_type", ["qwenimage", "flux2"])
@pytest.mark.parametrize("setting", [
    dict(g=1.0, reuse=2), dict(g=3.0, reuse=2), dict(g=3.0, reuse=3), dict(g=3.0, mode="uncond"),
])
def test_the_guider_equals_the_rule_by_hand_with_an_interval_and_one_head_set_per_row(model_type, setting):
    transformer, _ = tiny_transformer(model_type)
    last = HeadLayout.from_transformer(transformer).num_layers - 1
    g, reuse, mode = setting["g"], setting.get("reuse", 1), setting.get("mode", "cond")
    inputs = dict(embeddings(model_type, transformer), num_images_per_prompt=2)
    steps, interval = 5, (0.2, 1.0)
    # two rows, each with its own u on L0 (one row's head 1 only)
    per_layer = {0: torch.tensor([[0.0, 0.6], [0.0, 0.0]]), last: torch.tensor([[1.0, 1.0], [0.5, 1.0]])}
    heads = [f"L0H1@0.6,L{last}", f"L{last}H0@0.5,L{last}H1"]

    def run(guider):
        pipe = modular(model_type, transformer, guider)
        return pipe(**inputs, **SIZE[model_type], num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(1), output="latents")

    guider = HeadHunterGuidance(heads=heads, pag_scale=2.0, guidance_scale=g, pag_target="uniform", start=interval[0],
                                stop=interval[1], pag_reuse=reuse, pag_mode=mode)
    ours = run(guider)
    reference = run(RuleGuider(model_type, per_layer, "uniform", 2.0, g, reuse=reuse, mode=mode, interval=interval))
    exact = run(RuleGuider(model_type, per_layer, "uniform", 2.0, g, interval=interval))
    assert (ours - reference).abs().max() <= 1e-5
    assert torch.equal(run(guider), ours)  # the same guider's next call: nothing of the last one is reused
    assert (ours - exact).abs().max() > 1e-3  # the rule matters


@pytest.mark.parametrize("cfg,pag", [(cfg, dict(pag_reuse=k)) for cfg in (False, True) for k in (1, 2, 3)]
                         + [(True, dict(pag_mode="uncond"))])
def test_passes_per_step_is_what_the_transformer_sees(pipes, cfg, pag):
    pipe = pipes["sd3"]
    rows, handle = _rows_per_call(pipe)
    try:
        pipe("a fox", num_inference_steps=STEPS, height=32, width=32, output_type="latent", pag_heads="L1H0",
             pag_interval=INTERVAL, guidance_scale=2.5 if cfg else 1.0, **pag)
    finally:
        handle.remove()
    assert sum(rows) / STEPS == pytest.approx(passes_per_step(STEPS, INTERVAL, cfg=cfg, **pag))


def test_passes_per_step_by_hand():
    assert passes_per_step(20) == 2.0
    assert passes_per_step(20, pag_reuse=2) == 1.5
    assert passes_per_step(20, pag_reuse=3) == 1.35  # steps 0, 3, ..., 18: 7 of 20
    assert passes_per_step(20, pag_reuse=4, cfg=True) == 2.25
    assert passes_per_step(20, (0.5, 1.0)) == 1.5
    assert passes_per_step(20, pag_mode="uncond", cfg=True) == 2.0


@pytest.mark.parametrize("setting", [dict(reuse=2), dict(reuse=3), dict(mode="uncond")])
def test_an_attached_guider_with_prefix_reuse_and_per_row_heads_follows_the_rule(setting):
    """The fast path (installed once, the perturbed pass replaying the conditional pass's prefix) against the rule
    written out, with three rows: their own heads, none, and another set."""
    pipe = tiny_modular_pipeline("qwenimage")
    prompts, seeds, heads = ["a red fox", "a blue boat on a lake", "a cat"], [4, 5, 6], ["L1H0", "", "L0,L1H1@0.5"]
    per_layer = {0: torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
                 1: torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.5]])}
    reuse, mode = setting.get("reuse", 1), setting.get("mode", "cond")

    def run(guider, attach):
        pipe.modular.update_components(guider=guider)
        with guider.attached(pipe.transformer, pipe.modular.scheduler) if attach else nullcontext():
            return pipe.modular(prompt=prompts, negative_prompt=["blurry"] * 3, num_inference_steps=5, height=32,
                                width=32, generator=[torch.Generator().manual_seed(s) for s in seeds],
                                output="latents", **TINY_MODULAR_CALL["qwenimage"])

    ours = run(HeadHunterGuidance(heads=heads, pag_scale=2.0, guidance_scale=2.0, start=0.2, pag_reuse=reuse,
                                  pag_mode=mode, share_prefix=True), attach=True)
    assert headhunter.installed(pipe.transformer) == []
    reference = run(RuleGuider("qwenimage", per_layer, "identity", 2.0, 2.0, reuse=reuse, mode=mode,
                               interval=(0.2, 1.0)), attach=False)
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("script,stem", [("cheap_modes", "cheap-modes-small"),
                                         ("adaptive_reuse", "adaptive-reuse-small")])
def test_the_benchmark_scripts_run_in_their_small_mode(tmp_path, script, stem):
    """benchmarks/cheap_modes.py and adaptive_reuse.py --small: every table on a few pairs, figures that hold by
    construction (the exact row is 0 from exact, reuse k runs the perturbed pass on 1 step in k)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / f"{script}.py"), "--small", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    tables = result["tables"].values() if script == "cheap_modes" else [result]
    for table in tables:
        rows = table["rows"]
        assert rows["exact"]["pixel_diff_to_exact"] == 0 and rows["exact"]["gain_kept"] == pytest.approx(1.0)
        assert rows["reuse 2"]["passes_per_step"] == pytest.approx(rows["exact"]["passes_per_step"] - 0.5)
        assert rows["reuse 4"]["passes_per_step"] == pytest.approx(rows["exact"]["passes_per_step"] - 0.75)
    if script == "cheap_modes":
        assert set(result["search"]) == {"exact greedy", "greedy, pag_reuse=2", "coarse (4 of 20 steps), pag_reuse=2",
                                         "coarse (4 of 20 steps), exact"}
        assert result["tables"]["warmth, CFG on"]["rows"]["uncond (pag_mode)"]["passes_per_step"] == 2.0
    else:
        assert result["loop_vs_pipeline_max_pixel_diff"] == 0  # the experiment's loop is the pipeline's rule
    assert (tmp_path / f"{stem}.md").read_text().count("| exact |") == len(list(tables))


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_reuse_with_an_adaptive_scale_counts_only_the_steps_it_guides(pipes, model):
    """a = 0.004 takes w = 2 to 0 halfway through the schedule: the later steps are unguided (no perturbed rows, no
    reused term), and the reused Δ is weighted by each step's own w_t."""
    pipe = pipes[model]
    rows, handle = _rows_per_call(pipe)
    try:
        out = _call(pipe, model, False, pag_reuse=2, pag_adaptive_scale=0.004, pag_interval=(0.0, 1.0))
    finally:
        handle.remove()
    for i in range(len(PROMPTS)):
        ref = _reference(pipe, model, False, i, reuse=2, adaptive=0.004, interval=(0.0, 1.0))
        assert (out[i : i + 1] - ref).abs().max().item() <= TOL
    assert rows[0] == len(PROMPTS) + 2 and rows[-1] == len(PROMPTS)  # perturbed on the first step, none at the end
