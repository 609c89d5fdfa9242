"""The guided calls of the fault-injection matrix (tests/test_faults.py), each built the same way in any process.

Run as a script (``python tests/fault_cases.py OUT.pt``) it makes every call once in a fresh process and saves the
results: the reference that a call after a fault must equal bit for bit.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from headhunter import perturb
from headhunter.guiders import HeadHunterGuidance
from headhunter.testing import TINY_MODULAR, TINY_MODULAR_CALL, tiny_modular_pipeline, tiny_pipeline, tiny_transformer

logging.getLogger("diffusers").setLevel(logging.ERROR)

PIPELINES = {
    "sd3": ("tiny-sd3", "L1H0,L2", dict(guidance_scale=2.0)),
    "flux": ("tiny-flux", "L1H0,L2H1", dict(max_sequence_length=48)),
    "chroma": ("tiny-chroma", "L1H0,L2H1", dict(guidance_scale=1.0, max_sequence_length=48)),
}
PERTURBED_MODELS = ("sd3", "flux", "chroma", "flux2", "qwenimage", "zimage", "wan")
STEPS = 3


@dataclass
class Target:
    """A guided call and where faults go into it.

    Attributes:
        call: makes the call; returns its result as a float tensor.
        transformer: the transformer the call perturbs.
        first_layer: its first perturbed layer.
        decoder: the VAE's decoder (None: the call has no decode; its fault goes in the body after the forwards).
        steps: forwards with a perturbed pass in one call (a later step's fault goes into the second).
        forks: the perturbed rows are forked inside the transformer (a pipeline's call), not a pass of their own.
    """

    call: Callable[[], torch.Tensor]
    transformer: Any
    first_layer: int
    decoder: Any
    steps: int
    forks: bool = False


def _images(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.float()
    return torch.stack([torch.from_numpy(np.asarray(image.convert("RGB")).copy()) for image in images]).float()


def pipeline_target(name: str) -> Target:
    model, heads, extra = PIPELINES[name]
    pipe = tiny_pipeline(model)

    def call() -> torch.Tensor:
        return _images(pipe("a red fox", generator=torch.Generator().manual_seed(0), pag_heads=heads, pag_scale=2.0,
                            num_inference_steps=STEPS, height=32, width=32, output_type="pt", **extra).images)

    return Target(call, pipe.transformer, 1, pipe.vae.decoder, STEPS, forks=True)


def guider_target(model_type: str) -> Target:
    pipe = tiny_modular_pipeline(model_type)
    pipe.modular.update_components(guider=HeadHunterGuidance(heads="L0H1,L1", pag_scale=2.0, guidance_scale=2.0))
    # (the tiny tokenizer reads an empty negative prompt as no tokens at all, which Z-Image's blocks cannot take)
    negative = {"negative_prompt": "blurry"} if model_type == "zimage" else {}

    def call() -> torch.Tensor:
        images = pipe.modular(prompt="a red fox", generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                              height=32, width=32, output="images", **negative, **TINY_MODULAR_CALL[model_type])
        return _images(images)

    return Target(call, pipe.modular.transformer, 0, pipe.modular.vae.decoder, 2)


def perturb_target(model_type: str) -> Target:
    transformer, inputs = tiny_transformer(model_type, batch=1)

    def forward() -> torch.Tensor:
        out = transformer(**inputs, return_dict=False)[0]
        return torch.stack(out) if isinstance(out, list) else out  # (Z-Image returns a list of latents)

    def call() -> torch.Tensor:
        with torch.no_grad(), perturb(transformer, "L0H1,L1H0", target="uniform"):
            return torch.cat([forward() for _ in range(2)])

    return Target(call, transformer, 0, None, 2)


def studio_target(workspace: Path) -> Target:
    from headhunter.ui import Settings, Studio

    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", workspace)
    settings = Settings(prompt="a red fox", seed=0, steps=STEPS, width=32, height=32, cfg=1.0, pag_scale=2.0, heads="L1H0,L2")

    def call() -> torch.Tensor:
        pair = studio.generate(settings)[0]
        return _images(list(pair))

    return Target(call, studio.pipe.transformer, 1, studio.pipe.vae.decoder, STEPS, forks=True)


def search_target(run_root: Path) -> Target:
    from headhunter.search import HeadHunter

    pipe = tiny_pipeline("tiny-sd3")
    runs = []

    def call() -> torch.Tensor:
        runs.append(1)
        result = HeadHunter(pipe, "colorfulness", ["a parrot"], [0], 1, 1, run_root / f"run{len(runs)}",
                            num_inference_steps=2, height=32, width=32, pag_scale=3.0, model_name="tiny-sd3",
                            progress=False, batch_size=4).run()
        scores = sorted(result.scores[0].items())  # every candidate's mean score, then the selected head
        return torch.tensor([v for _, v in scores] + [h.layer * 100 + h.head for h in result.selected],
                            dtype=torch.float64)

    # the candidates go in batches of 4 images (one step each here counts as a "step": the second batch is later)
    return Target(call, pipe.transformer, 0, pipe.vae.decoder, 2, forks=True)


def targets(workspace: Path) -> dict[str, Callable[[], Target]]:
    """Every target of the matrix by name (built on demand)."""
    found: dict[str, Callable[[], Target]] = {}
    for name in PIPELINES:
        found[f"pipeline-{name}"] = lambda name=name: pipeline_target(name)
    for model_type in TINY_MODULAR:
        found[f"guider-{model_type}"] = lambda model_type=model_type: guider_target(model_type)
    for model_type in PERTURBED_MODELS:
        found[f"perturb-{model_type}"] = lambda model_type=model_type: perturb_target(model_type)
    found["studio"] = lambda: studio_target(workspace / "studio")
    found["search"] = lambda: search_target(workspace / "search")
    return found


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        results = {name: make().call() for name, make in targets(Path(folder)).items()}
    torch.save(results, sys.argv[1])
