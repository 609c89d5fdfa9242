"""The toy-shapes model before training: an SD3-architecture pipeline sized for 32×32 images of the toy-shapes world.

* a word-level CLIP tokenizer (the grammar's words are single tokens; any other text still tokenizes by character),
  16 tokens long, shared by both text encoders;
* two small ``CLIPTextModelWithProjection`` text encoders (trained with the transformer), no T5: the pipeline fills
  its place with zeros, as SD3 does without ``text_encoder_3``;
* an ``AutoencoderKL`` with one downsampling (32×32×3 pixels ↔ 16×16×4 latents);
* an ``SD3Transformer2DModel`` of 6 joint blocks × 4 heads of 24 channels, patch 2 (64 image tokens).

The trained weights are in ``headhunter/testbed/toy-shapes`` (see :mod:`headhunter.testbed.train`).
"""

from __future__ import annotations

from typing import Any

import torch

from .worlds import SHAPES_WORDS

__all__ = ["IMAGE_SIZE", "MAX_TOKENS", "WORDS", "toy_components", "word_tokenizer"]

IMAGE_SIZE = 32
MAX_TOKENS = 16  # the longest grammar prompt is 15 tokens with its start and end marks
#: toy-shapes' words (the default world's): each is one token of :func:`word_tokenizer`.
WORDS = SHAPES_WORDS

_CLIP_HIDDEN = 64
_CLIP_PROJECTION = 32


def word_tokenizer(words: tuple[str, ...] = WORDS, max_tokens: int = MAX_TOKENS) -> Any:
    """A CLIP BPE tokenizer whose merges are learnt from ``words`` (so a grammar word is one token), over every byte
    character with and without the end-of-word mark (so any text tokenizes), ``max_tokens`` long."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = _learn_merges(words)
    tokens += list(dict.fromkeys(left + right for left, right in merges))
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def _learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE's learning rule, with ties broken by the pair itself so the merges (and token ids) never change: merge the
    most frequent adjacent pair until every word is one piece."""
    from collections import Counter

    pieces = [list(word[:-1]) + [word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces):
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for p in pieces:
            i = 0
            while i < len(p) - 1:
                if (p[i], p[i + 1]) == best:
                    p[i:i + 2] = [p[i] + p[i + 1]]
                i += 1
    return merges


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=_CLIP_HIDDEN, intermediate_size=2 * _CLIP_HIDDEN, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=_CLIP_PROJECTION,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu"))


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=16, sample_size=IMAGE_SIZE, scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False,
        use_post_quant_conv=False)


def _transformer() -> Any:
    from diffusers import SD3Transformer2DModel

    heads, head_dim = 4, 24
    return SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=6,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=2 * _CLIP_HIDDEN,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=2 * _CLIP_PROJECTION, pos_embed_max_size=16,
        qk_norm="rms_norm")


def toy_components(seed: int = 0, words: tuple[str, ...] = WORDS, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """The untrained components of a toy pipeline (weights fixed by ``seed``) for a world with ``words`` and prompts
    of at most ``max_tokens`` tokens (default: toy-shapes')."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = word_tokenizer(words, max_tokens)
    torch.manual_seed(seed)
    return {
        "transformer": _transformer(),
        "vae": _vae(),
        "text_encoder": _text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "text_encoder_2": _text_encoder(tokenizer),
        "tokenizer_2": tokenizer,
        "text_encoder_3": None,
        "tokenizer_3": None,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0),
    }
