"""Weight-free objectives: image statistics that need no download and run anywhere (also the demo's objectives).

Images are float [B, 3, H, W] in [0, 1]; luminance is Rec. 601, ``Y = 0.299 R + 0.587 G + 0.114 B``. Every score is
per image (independent of the rest of the batch) and differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_scorer


def luminance(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return 0.299 * r + 0.587 * g + 0.114 * b


@register_scorer("colorfulness", reference=(40.0, 20.0))
def colorfulness(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Hasler–Süsstrunk colorfulness on the 0–255 scale: with rg = R − G and yb = (R + G)/2 − B,
    C = sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²). A gray image scores 0."""
    x = images * 255.0
    rg = (x[:, 0] - x[:, 1]).flatten(1)
    yb = (0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]).flatten(1)
    std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return std + 0.3 * mean


@register_scorer("contrast", reference=(0.2, 0.08))
def contrast(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """RMS contrast: the standard deviation of luminance, in [0, 0.5]."""
    return luminance(images).flatten(1).std(dim=1, unbiased=False)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@register_scorer("sharpness", reference=(0.01, 0.01))
def sharpness(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Variance of the Laplacian of luminance (4-neighbour kernel, valid region only): higher is sharper."""
    kernel = _LAPLACIAN.to(images.device, images.dtype).view(1, 1, 3, 3)
    response = F.conv2d(luminance(images)[:, None], kernel)
    return response.flatten(1).var(dim=1, unbiased=False)


@register_scorer("brightness", reference=(0.45, 0.15))
def brightness(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Mean luminance, in [0, 1]."""
    return luminance(images).flatten(1).mean(dim=1)


@register_scorer("darkness", reference=(0.55, 0.15))
def darkness(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """1 − mean luminance, in [0, 1]."""
    return 1.0 - brightness(images, prompts)


@register_scorer("saturation", reference=(0.35, 0.15))
def saturation(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Mean HSV saturation, (max − min) / max per pixel (0 for black pixels), in [0, 1]."""
    high = images.amax(dim=1)
    low = images.amin(dim=1)
    sat = torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))
    return sat.flatten(1).mean(dim=1)


@register_scorer("warmth", reference=(0.05, 0.1))
def warmth(images: torch.Tensor, prompts: list) -> torch.Tensor:
    """Mean of R − B, in [−1, 1]: positive for warm (red/orange) images, negative for cool (blue) ones."""
    return (images[:, 0] - images[:, 2]).flatten(1).mean(dim=1)
