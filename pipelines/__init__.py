"""diffusers pipelines with head-level SoftPAG guidance: ``HeadHunterSD3Pipeline`` (SD3, SD3.5),
``HeadHunterFluxPipeline`` (FLUX.1 dev and schnell), ``HeadHunterChromaPipeline`` (Chroma),
``HeadHunterModularPipeline`` (a diffusers modular pipeline — FLUX.2 Klein base, Qwen-Image, Z-Image — driven through
``HeadHunterGuidance``), and :func:`load_pipeline` for model names as users type them."""

from .chroma import HeadHunterChromaPipeline
from .flux import HeadHunterFluxPipeline
from .loading import load_pipeline, model_family
from .modular import HeadHunterModularPipeline
from .sd3 import HeadHunterSD3Pipeline

__all__ = ["HeadHunterChromaPipeline", "HeadHunterFluxPipeline", "HeadHunterModularPipeline", "HeadHunterSD3Pipeline", "load_pipeline",
           "model_family"]
