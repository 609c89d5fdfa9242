"""Image handling in plain torch (no torchvision): conversion and the preprocessing of the scorers' encoders.

Everything here is differentiable in the pixels.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImagesLike", "normalize", "resize_and_pad", "resize_center_crop", "to_tensor"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImagesLike = Union[torch.Tensor, Sequence[Any], Any]


def to_tensor(images: ImagesLike, device: Any = None) -> torch.Tensor:
    """PIL images (one or a list) or a float tensor [B, 3, H, W] / [3, H, W] in [0, 1] → float32 [B, 3, H, W]."""
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image tensors must be [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        x = x if x.is_floating_point() else x.float() / 255.0
        return x.to(device=device or x.device, dtype=torch.float32)  # a no-op (same tensor) when nothing changes
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("no images to score")
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("images in one batch must share a size; score differently sized images in separate calls")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device or "cpu")


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Antialiased bicubic follows PIL's bicubic filter, which the reference preprocessors use; PIL works on 8-bit
    # images, so its overshoot at edges is clipped to the valid range: clamp the same way.
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)


def resize_center_crop(x: torch.Tensor, size: int, crop: int | None = None) -> torch.Tensor:
    """CLIP-style: resize the shorter side to ``size`` (bicubic), then center-crop ``crop`` × ``crop``."""
    crop = crop or size
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    x = _resize(x, nh, nw)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def resize_and_pad(x: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """open_clip's ``ResizeMaxSize`` (HPS v2): resize the longer side to ``size``, pad the rest evenly with ``fill``."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = _resize(x, nh, nw)
    pad_h, pad_w = size - nh, size - nw
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def normalize(x: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
