"""ImageReward rebuilt on transformers' BLIP classes: a BLIP ViT-L/16 image encoder, a BERT text encoder that
cross-attends to the image, and the reward MLP on the text [CLS] state, normalised with the published mean and std.

The original checkpoint (``THUDM/ImageReward``, ``ImageReward.pt``) is remapped on load: BLIP's text encoder already
uses transformers' BERT names; the timm-style ViT names are renamed. The checkpoint's contrastive projections
(``blip.vision_proj``, ``blip.text_proj``) are not part of the reward and are dropped by name; any other unknown or
missing key is an error.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .base import register_scorer
from .hub import load_checkpoint, load_pretrained, resolve_file
from .images import normalize, resize_center_crop

__all__ = ["ImageRewardModel", "imagereward_to_transformers"]

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
_UNUSED = re.compile(r"blip\.(vision_proj|text_proj)\.(weight|bias)|blip\.text_encoder\.embeddings\.position_ids")

_VIT_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_SINGLE = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}


def imagereward_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ImageReward state dict into :class:`ImageRewardModel` keys (``vision.*``, ``text.*``, ``mlp.*``)."""
    out, unknown = {}, []
    for key, value in state.items():
        if _UNUSED.fullmatch(key):
            continue
        if key.startswith("blip.text_encoder."):
            out["text." + key[len("blip.text_encoder."):]] = value
        elif key.startswith("blip.visual_encoder."):
            rest = key[len("blip.visual_encoder."):]
            block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
            if block and block.group(2) in _VIT_BLOCK:
                out[f"vision.encoder.layers.{block.group(1)}.{_VIT_BLOCK[block.group(2)]}.{block.group(3)}"] = value
            elif rest in _VIT_SINGLE:
                out["vision." + _VIT_SINGLE[rest]] = value
            else:
                unknown.append(key)
        elif re.fullmatch(r"mlp\.layers\.\d+\.(weight|bias)", key):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown ImageReward checkpoint keys: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


class ImageRewardModel(torch.nn.Module):
    """BLIP vision + cross-attending BERT + reward MLP, on transformers' ``BlipVisionModel`` / ``BlipTextModel``."""

    def __init__(self, vision_config: dict | None = None, text_config: dict | None = None):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
        vision.update(vision_config or {})
        text = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=vision["hidden_size"], intermediate_size=3072,
                    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, layer_norm_eps=1e-12,
                    hidden_act="gelu", bos_token_id=None, sep_token_id=None)
        text.update(text_config or {})
        self.vision = BlipVisionModel(BlipVisionConfig(**vision))
        self.text = BlipTextModel(BlipTextConfig(**text), add_pooling_layer=False)
        width = text["hidden_size"]
        self.mlp = torch.nn.Module()
        self.mlp.layers = torch.nn.Sequential(
            torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised reward per pair: ``(mlp(text[CLS] | image) − mean) / std``."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                         encoder_attention_mask=image_mask, return_dict=True)
        reward = self.mlp.layers(text.last_hidden_state[:, 0, :]).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


def load_blip_tokenizer(source: str, *, local_files_only: bool = False) -> Any:
    """BERT-base-uncased with BLIP's two added tokens ([DEC] as bos, [ENC]), 30,524 ids as in ImageReward."""
    from transformers import BertTokenizer

    tokenizer = load_pretrained(BertTokenizer, source, scorer="imagereward", local_files_only=local_files_only)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


@register_scorer("imagereward", factory=True, reference=(0.0, 1.0), weights="THUDM/ImageReward (ImageReward.pt, med_config) + google-bert/bert-base-uncased tokenizer", size="447M params (BLIP ViT-L + BERT-base)", license="Apache-2.0")
def imagereward_score(argument: str | None, device: Any = None, dtype: Any = None, model_id: str = "THUDM/ImageReward",
                      filename: str = "ImageReward.pt", tokenizer_id: str = "google-bert/bert-base-uncased",
                      vision_config: dict | None = None, text_config: dict | None = None, local_files_only: bool = False):
    """ImageReward: human preference reward of an image for its prompt, standardised (≈ −2 … 2)."""
    path = resolve_file(model_id, filename, scorer="imagereward", local_files_only=local_files_only)
    tokenizer = load_blip_tokenizer(tokenizer_id, local_files_only=local_files_only)
    model = ImageRewardModel(vision_config, text_config)
    model.load_state_dict(imagereward_to_transformers(load_checkpoint(path)), strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    size = model.vision.config.image_size

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        param = next(model.parameters())
        pixels = normalize(resize_center_crop(images, size)).to(param.device, param.dtype)
        tokens = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        return model(pixels, tokens.input_ids.to(param.device), tokens.attention_mask.to(param.device)).float()

    return score
