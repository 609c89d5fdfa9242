"""diffusers pipelines with head-level SoftPAG guidance: ``HeadHunterSD3Pipeline`` (SD3, SD3.5) and
``HeadHunterFluxPipeline`` (FLUX.1 dev and schnell)."""

from .flux import HeadHunterFluxPipeline
from .sd3 import HeadHunterSD3Pipeline

__all__ = ["HeadHunterFluxPipeline", "HeadHunterSD3Pipeline"]
