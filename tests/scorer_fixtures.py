"""Tiny random-weight checkpoints for the neural scorers, written offline in the layouts the real weights use:
transformers folders (PickScore, CLIP, aesthetic's CLIP), a .pth head (aesthetic), an open_clip state dict (HPS) and
an ImageReward state dict. The exporters to the original layouts are written here, independently of headhunter's
importers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertTokenizer, CLIPConfig, CLIPModel

from headhunter.testing import tiny_clip_tokenizer

TINY_CLIP = dict(
    text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, hidden_act="gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                       patch_size=8, hidden_act="gelu"),
    projection_dim=16,
)


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**TINY_CLIP)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    return model


def write_clip_folder(folder: Path, seed: int = 0) -> CLIPModel:
    model = tiny_clip(seed)
    model.save_pretrained(folder)
    tiny_clip_tokenizer().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return model


def hf_clip_to_openclip(model: CLIPModel) -> dict:
    """transformers CLIPModel → open_clip key layout (in_proj packing q, k, v; projections as right-multiplied
    matrices)."""
    sd = model.state_dict()
    out = {}
    for tower, prefix, n in (("text_model", "", model.config.text_config.num_hidden_layers),
                             ("vision_model", "visual.", model.config.vision_config.num_hidden_layers)):
        for i in range(n):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
                out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
                out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
                out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
                out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
                out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t()
    out["logit_scale"] = sd["logit_scale"]
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.ln_pre.weight"] = sd["vision_model.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = sd["vision_model.pre_layrnorm.bias"]
    out["visual.ln_post.weight"] = sd["vision_model.post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd["vision_model.post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].t()
    return {k: v.clone() for k, v in out.items()}


def openclip_reference_features(sd: dict, pixels: torch.Tensor, ids: torch.Tensor, heads: int) -> tuple:
    """open_clip's CLIP forward written directly on an open_clip state dict (nn.MultiheadAttention semantics via
    torch's own multi_head_attention_forward). Returns L2-normalised (image, text) features."""
    F = torch.nn.functional

    def blocks(x, prefix, mask):
        i = 0
        while f"{prefix}transformer.resblocks.{i}.ln_1.weight" in sd:
            p = f"{prefix}transformer.resblocks.{i}."
            h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
            h = h.transpose(0, 1)  # [L, N, E]
            attn, _ = F.multi_head_attention_forward(
                h, h, h, x.shape[-1], heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"], None, None,
                False, 0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"], training=False,
                need_weights=False, attn_mask=mask)
            x = x + attn.transpose(0, 1)
            h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
            h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                         sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
            x = x + h
            i += 1
        return x

    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    x = blocks(x, "", causal)
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    text = x[torch.arange(x.shape[0]), ids.argmax(-1)] @ sd["text_projection"]

    v = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    v = v.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(v.shape[0], 1, -1)
    v = torch.cat([cls, v], dim=1) + sd["visual.positional_embedding"]
    v = F.layer_norm(v, v.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    v = blocks(v, "visual.", None)
    image = F.layer_norm(v[:, 0], v.shape[-1:], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def write_bert_tokenizer(folder: Path) -> BertTokenizer:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


TINY_BLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=16)
TINY_BLIP_TEXT = dict(vocab_size=5 + 2 * 42 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=64)


def imagereward_to_original(model) -> dict:
    """headhunter's ImageRewardModel → ImageReward.pt key layout (BLIP timm ViT + med BERT + MLP), with the
    checkpoint's unused contrastive projections added as the real file has them."""
    out = {}
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv",
             "self_attn.projection": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for key, value in model.state_dict().items():
        if key.startswith("text."):
            out["blip.text_encoder." + key[5:]] = value
        elif key.startswith("mlp."):
            out[key] = value
        elif key.startswith("vision.encoder.layers."):
            _, _, _, layer, rest = key.split(".", 4)
            module, kind = rest.rsplit(".", 1)
            out[f"blip.visual_encoder.blocks.{layer}.{names[module]}.{kind}"] = value
        else:
            single = {"vision.embeddings.class_embedding": "cls_token", "vision.embeddings.position_embedding": "pos_embed",
                      "vision.embeddings.patch_embedding.weight": "patch_embed.proj.weight",
                      "vision.embeddings.patch_embedding.bias": "patch_embed.proj.bias",
                      "vision.post_layernorm.weight": "norm.weight", "vision.post_layernorm.bias": "norm.bias"}
            out["blip.visual_encoder." + single[key]] = value
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(TINY_BLIP_TEXT["max_position_embeddings"])[None]
    out["blip.vision_proj.weight"] = torch.randn(8, 32)
    out["blip.vision_proj.bias"] = torch.randn(8)
    out["blip.text_proj.weight"] = torch.randn(8, 32)
    out["blip.text_proj.bias"] = torch.randn(8)
    return {k: v.clone() for k, v in out.items()}
