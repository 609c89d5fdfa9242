"""CLIP-family scorers on transformers' ``CLIPModel``: PickScore, CLIP score, style similarity, the LAION aesthetic
predictor and HPS v2 / v2.1. Preprocessing is plain torch (see ``images.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .base import register_scorer
from .hub import load_checkpoint, load_pretrained, resolve_file
from .images import CLIP_MEAN, CLIP_STD, normalize, resize_and_pad, resize_center_crop
from .openclip import openclip_to_transformers, vit_h_14_config

__all__ = ["CLIPEncoder", "load_clip_encoder"]

OPENAI_CLIP_L14 = "openai/clip-vit-large-patch14"
LAION_H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class CLIPEncoder:
    """A CLIP model with its tokenizer and image preprocessing; embeddings come back L2-normalised."""

    model: Any
    tokenizer: Any
    resize: int = 224
    crop: int = 224
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    pad: bool = False  # open_clip resize-longest-and-pad (HPS) instead of resize-shortest-and-crop

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_and_pad(images, self.crop) if self.pad else resize_center_crop(images, self.resize, self.crop)
        return normalize(x, self.mean, self.std)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        pooled = self.model.vision_model(pixel_values=self.pixels(images).to(param.device, param.dtype)).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10_000 else 77,
                                return_tensors="pt").to(device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)


def _image_settings(source: str, scorer: str, local_files_only: bool) -> dict:
    path = resolve_file(source, "preprocessor_config.json", scorer=scorer, local_files_only=local_files_only)
    config = json.loads(path.read_text())
    size = config.get("size", 224)
    size = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else size
    crop = config.get("crop_size", size)
    crop = crop.get("height", size) if isinstance(crop, dict) else crop
    return dict(resize=int(size), crop=int(crop), mean=tuple(config.get("image_mean", CLIP_MEAN)),
                std=tuple(config.get("image_std", CLIP_STD)))


def load_clip_encoder(model_id: str, processor_id: str | None, *, scorer: str, device: Any, dtype: Any,
                      local_files_only: bool = False) -> CLIPEncoder:
    """CLIPModel weights from ``model_id``; tokenizer and image settings from ``processor_id`` (default: the same)."""
    from transformers import CLIPModel, CLIPTokenizer

    processor_id = processor_id or model_id
    model = load_pretrained(CLIPModel, model_id, scorer=scorer, local_files_only=local_files_only, torch_dtype=dtype)
    tokenizer = load_pretrained(CLIPTokenizer, processor_id, scorer=scorer, local_files_only=local_files_only)
    settings = _image_settings(processor_id, scorer, local_files_only)
    return CLIPEncoder(model.to(device).eval().requires_grad_(False), tokenizer, **settings)


@register_scorer("pickscore", factory=True, reference=(21.0, 1.5), weights="yuvalkirstain/PickScore_v1 (processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K)", size="986M params (ViT-H-14)", license="MIT")
def pickscore(argument: str | None, device: Any = None, dtype: Any = None, model_id: str = "yuvalkirstain/PickScore_v1",
              processor_id: str = LAION_H14, local_files_only: bool = False):
    """PickScore: human preference for an image given its prompt, ``logit_scale · cos(image, prompt)`` (≈ 18–23)."""
    enc = load_clip_encoder(model_id, processor_id, scorer="pickscore", device=device, dtype=dtype,
                            local_files_only=local_files_only)

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cos = (enc.image_embeds(images) * enc.text_embeds(prompts)).sum(-1)
        return enc.model.logit_scale.exp().float() * cos

    return score


@register_scorer("clip", factory=True, reference=(26.0, 4.0), weights=OPENAI_CLIP_L14, size="428M params (ViT-L/14)", license="MIT")
def clip_score(argument: str | None, device: Any = None, dtype: Any = None, model_id: str = OPENAI_CLIP_L14,
               processor_id: str | None = None, local_files_only: bool = False):
    """CLIP score: prompt–image agreement, ``100 · max(cos(image, prompt), 0)``."""
    enc = load_clip_encoder(model_id, processor_id, scorer="clip", device=device, dtype=dtype,
                            local_files_only=local_files_only)

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return 100.0 * (enc.image_embeds(images) * enc.text_embeds(prompts)).sum(-1).clamp_min(0)

    return score


@register_scorer("style", factory=True, argument="required", reference=(20.0, 4.0), weights=OPENAI_CLIP_L14, size="428M params (ViT-L/14)", license="MIT")
def style_score(argument: str, device: Any = None, dtype: Any = None, model_id: str = OPENAI_CLIP_L14,
                processor_id: str | None = None, neutral: str | None = None, local_files_only: bool = False):
    """Style similarity: ``100 · cos(image, style text)`` (the prompt is ignored). With ``neutral="a photo"`` the
    similarity to that neutral text is subtracted (directional: how much more the image is the style than neutral)."""
    enc = load_clip_encoder(model_id, processor_id, scorer="style", device=device, dtype=dtype,
                            local_files_only=local_files_only)
    with torch.no_grad():
        style = enc.text_embeds([argument])
        base = enc.text_embeds([neutral]) if neutral else None

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embeds = enc.image_embeds(images)
        value = 100.0 * (embeds @ style.T).squeeze(-1)
        if base is not None:
            value = value - 100.0 * (embeds @ base.T).squeeze(-1)
        return value

    return score


class AestheticHead(torch.nn.Module):
    """LAION improved aesthetic predictor head (sac+logos+ava1, linear MSE) on L2-normalised CLIP ViT-L/14 embeds."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)


@register_scorer("aesthetic", factory=True, reference=(5.5, 0.6), weights="camenduru/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth) + openai/clip-vit-large-patch14", size="428M + 0.9M params", license="Apache-2.0 (head), MIT (CLIP)")
def aesthetic_score(argument: str | None, device: Any = None, dtype: Any = None, model_id: str = "camenduru/improved-aesthetic-predictor",
                    filename: str = "sac+logos+ava1-l14-linearMSE.pth", clip_id: str = OPENAI_CLIP_L14,
                    local_files_only: bool = False):
    """LAION aesthetic predictor v2: a linear-MSE MLP on the L2-normalised CLIP ViT-L/14 image embedding (≈ 1–10).
    ``model_id`` may also be a local folder or the .pth file itself (the original is in the improved-aesthetic-predictor
    GitHub repository)."""
    enc = load_clip_encoder(clip_id, None, scorer="aesthetic", device=device, dtype=dtype,
                            local_files_only=local_files_only)
    head = AestheticHead(enc.model.config.projection_dim)
    path = resolve_file(model_id, filename, scorer="aesthetic", local_files_only=local_files_only)
    head.load_state_dict(load_checkpoint(path), strict=True)
    head = head.to(device).eval().requires_grad_(False)

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return head(enc.image_embeds(images).to(next(head.parameters()).dtype)).float()

    return score


def _hps_factory(default_file: str, name: str):
    def factory(argument: str | None, device: Any = None, dtype: Any = None, model_id: str = "xswu/HPSv2",
                filename: str = default_file, tokenizer_id: str = LAION_H14, config: Any = None,
                local_files_only: bool = False):
        from transformers import CLIPModel, CLIPTokenizer

        path = resolve_file(model_id, filename, scorer=name, local_files_only=local_files_only)
        model = CLIPModel(config or vit_h_14_config())
        model.load_state_dict(openclip_to_transformers(load_checkpoint(path)), strict=True)
        tokenizer = load_pretrained(CLIPTokenizer, tokenizer_id, scorer=name, local_files_only=local_files_only)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        size = model.config.vision_config.image_size
        enc = CLIPEncoder(model, tokenizer, resize=size, crop=size, pad=True)

        def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            return (enc.image_embeds(images) * enc.text_embeds(prompts)).sum(-1)

        return score

    factory.__doc__ = (
        f"HPS {'v2.1' if '2.1' in default_file else 'v2'}: human preference score, cos(image, prompt) of an open_clip "
        "ViT-H-14 fine-tuned on HPD (≈ 0.2–0.35); the open_clip checkpoint is remapped into transformers' CLIPModel."
    )
    return factory


register_scorer("hpsv2", _hps_factory("HPS_v2_compressed.pt", "hpsv2"), factory=True, reference=(0.27, 0.02),
                weights="xswu/HPSv2 (HPS_v2_compressed.pt), tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K", size="986M params (ViT-H-14)", license="Apache-2.0")
register_scorer("hpsv21", _hps_factory("HPS_v2.1_compressed.pt", "hpsv21"), factory=True, reference=(0.28, 0.02),
                weights="xswu/HPSv2 (HPS_v2.1_compressed.pt), tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K", size="986M params (ViT-H-14)", license="Apache-2.0")
