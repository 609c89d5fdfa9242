"""diffusers pipelines with head-level SoftPAG guidance: ``HeadHunterSD3Pipeline`` (SD3, SD3.5) and
``HeadHunterFluxPipeline`` (FLUX.1 dev and schnell), and :func:`load_pipeline` for model names as users type them."""

from .flux import HeadHunterFluxPipeline
from .loading import load_pipeline, model_family
from .sd3 import HeadHunterSD3Pipeline

__all__ = ["HeadHunterFluxPipeline", "HeadHunterSD3Pipeline", "load_pipeline", "model_family"]
