"""open_clip checkpoints (HPS v2 / v2.1 are open_clip ViT-H-14) remapped into transformers' ``CLIPModel``.

open_clip keeps each attention's q, k, v in one ``in_proj_weight`` [3D, D] (q rows first, then k, then v, as
``nn.MultiheadAttention``) and stores the two projections as matrices applied on the right (``x @ proj``);
transformers has separate ``q_proj`` / ``k_proj`` / ``v_proj`` linears and ``nn.Linear`` projections (``x @ W.T``),
so the projections are transposed.
"""

from __future__ import annotations

import re

import torch

__all__ = ["openclip_to_transformers", "vit_h_14_config"]


def vit_h_14_config():
    """transformers ``CLIPConfig`` of open_clip's ViT-H-14 (HPS v2's backbone)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", eos_token_id=2),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=1024,
    )


_LAYER_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def openclip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip ``CLIP`` state dict into transformers ``CLIPModel`` keys. Raises ValueError on any key it
    does not know (nothing is skipped silently); missing keys are caught by the strict load that follows."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        block = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", rest)
        in_proj = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", rest)
        if in_proj:
            layer, kind = in_proj.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{tower}.encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.clone()
        elif block and block.group(2) in _LAYER_PARTS:
            layer, part, kind = block.groups()
            out[f"{tower}.encoder.layers.{layer}.{_LAYER_PARTS[part]}.{kind}"] = value
        elif tower == "text_model" and rest in _TEXT_SINGLETONS:
            target, transform = _TEXT_SINGLETONS[rest]
            out[target] = transform(value)
        elif tower == "vision_model" and rest in _VISION_SINGLETONS:
            target, transform = _VISION_SINGLETONS[rest]
            out[target] = transform(value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown open_clip checkpoint keys: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()


_TEXT_SINGLETONS = {
    "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", _same),
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", _same),
    "ln_final.weight": ("text_model.final_layer_norm.weight", _same),
    "ln_final.bias": ("text_model.final_layer_norm.bias", _same),
    "text_projection": ("text_projection.weight", _transpose),
    "logit_scale": ("logit_scale", lambda x: x.reshape(())),
}
_VISION_SINGLETONS = {
    "class_embedding": ("vision_model.embeddings.class_embedding", _same),
    "positional_embedding": ("vision_model.embeddings.position_embedding.weight", _same),
    "conv1.weight": ("vision_model.embeddings.patch_embedding.weight", _same),
    "ln_pre.weight": ("vision_model.pre_layrnorm.weight", _same),
    "ln_pre.bias": ("vision_model.pre_layrnorm.bias", _same),
    "ln_post.weight": ("vision_model.post_layernorm.weight", _same),
    "ln_post.bias": ("vision_model.post_layernorm.bias", _same),
    "proj": ("visual_projection.weight", _transpose),
}
