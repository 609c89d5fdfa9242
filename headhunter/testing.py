"""Tiny random-weight SD3, SD3.5-style and FLUX.1 pipelines, built offline (tokenizers included) and deterministically;
and the trained toy models shipped with the package.

They share the classes of the real models, so everything headhunter does on SD3-medium or FLUX.1-dev runs on them in
milliseconds: the tests use them. The images are noise; only the code paths are real.

:func:`toy_pipeline` loads ``toy-shapes``, a small SD3-architecture model trained offline on coloured shapes
(:mod:`headhunter.testbed`): its images follow their prompts, so guidance and search show real effects; the demo and
the studio's default model use it. ``toy_pipeline("toy-scenes")`` loads its sibling trained on two objects in a
relation, whose unguided samples often get the composition wrong (CFG repairs much of it; see the README's
toy-scenes testbed).

    >>> from headhunter.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("sd3")                        # a HeadHunterSD3Pipeline
    >>> image = pipe("a cat", pag_heads="L1H2", num_inference_steps=2).images[0]
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .testbed import TOY_MODELS, WORLDS  # the trained toy models: accepted by toy_pipeline() and --model

__all__ = ["TINY_MODELS", "TINY_MODULAR", "TINY_MODULAR_CALL", "TINY_TRANSFORMERS", "TOY_CALL", "TOY_MODELS",
           "TOY_PROMPT", "tiny_clip_tokenizer", "tiny_components", "tiny_modular_pipeline", "tiny_pipeline",
           "tiny_qwen_tokenizer", "tiny_t5_tokenizer", "tiny_transformer", "toy_pipeline", "toy_pipeline_path"]

#: Names accepted by :func:`tiny_pipeline` (and by the CLI's ``--model``).
TINY_MODELS = ("tiny-sd3", "tiny-sd3.5", "tiny-sd3.5-dual", "tiny-flux", "tiny-chroma")
#: The sampler settings the toy models are measured with: the defaults of the CLI and the studio. One zero text
#: token in T5's place (the model was trained for any count; see :mod:`headhunter.testbed.train`).
TOY_CALL = {"num_inference_steps": 20, "max_sequence_length": 1}
TOY_PROMPT = WORLDS["toy-shapes"].prompts[0]  # "a red circle on a blue background, top left"

_CLIP_HIDDEN = 16
_JOINT_DIM = 32


def tiny_clip_tokenizer() -> Any:
    """A byte-level CLIP BPE tokenizer without merges: start/end tokens plus every byte character, with and
    without the end-of-word mark, so any text tokenizes (one token per character)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer() -> Any:
    """A T5-style Unigram tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``▁``-prefixed pieces) for ASCII text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _clip_text_encoder(with_projection: bool, hidden: int, projection: int, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_cls(config)


def _t5_encoder(d_model: int, tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, shift: float | None) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=1.5035,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_components(
    model: str = "tiny-sd3", *, num_layers: int = 3, num_single_layers: int = 2, num_heads: int | None = None, seed: int = 0
) -> dict:
    """The components of a tiny pipeline, each in eval mode, with weights fixed by ``seed``.

    Args:
        model: ``tiny-sd3`` (SD3), ``tiny-sd3.5`` (QK RMS-norm), ``tiny-sd3.5-dual`` (QK-norm and SD3.5's image-only
            ``attn2`` in the first block), ``tiny-flux`` (FLUX.1-dev style, guidance embedding on), ``tiny-chroma``
            (Chroma: FLUX.1's blocks, T5 only, text-padding attention mask).
        num_layers: joint blocks (SD3) or double-stream blocks (FLUX, Chroma).
        num_single_layers: FLUX and Chroma single-stream blocks.
        num_heads: attention heads per layer (default 4 for SD3, 2 for FLUX). With ``num_layers=24, num_heads=24``
            (SD3) or ``num_layers=19, num_single_layers=38, num_heads=24`` (FLUX) the head layout is the real models',
            so real head specs such as ``L13H17`` or ``L38H18`` validate.
        seed: fixes every random weight.
    """
    from diffusers import (ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel,
                           SD3Transformer2DModel)

    model = model.lower()
    if model not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {model!r}; choose one of {', '.join(TINY_MODELS)}")
    clip = tiny_clip_tokenizer()
    t5 = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    if model == "tiny-flux":
        components = {
            "transformer": FluxTransformer2DModel(
                patch_size=1,
                in_channels=16,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                attention_head_dim=16,
                num_attention_heads=num_heads or 2,
                joint_attention_dim=_JOINT_DIM,
                pooled_projection_dim=_JOINT_DIM,
                guidance_embeds=True,
                axes_dims_rope=[4, 4, 8],
            ),
            "text_encoder": _clip_text_encoder(False, _JOINT_DIM, _JOINT_DIM, clip),
            "tokenizer": clip,
            "text_encoder_2": _t5_encoder(_JOINT_DIM, t5),
            "tokenizer_2": t5,
            "vae": _vae(4, 0.0609),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
            "image_encoder": None,
            "feature_extractor": None,
        }
    elif model == "tiny-chroma":
        components = {
            "transformer": ChromaTransformer2DModel(
                patch_size=1,
                in_channels=16,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                attention_head_dim=16,
                num_attention_heads=num_heads or 2,
                joint_attention_dim=_JOINT_DIM,
                axes_dims_rope=(4, 4, 8),
                approximator_num_channels=8,
                approximator_hidden_dim=32,
                approximator_layers=1,
            ),
            "text_encoder": _t5_encoder(_JOINT_DIM, t5),
            "tokenizer": t5,
            "vae": _vae(4, 0.0609),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
            "image_encoder": None,
            "feature_extractor": None,
        }
    else:
        qk_norm = None if model == "tiny-sd3" else "rms_norm"
        dual = (0,) if model == "tiny-sd3.5-dual" else ()
        components = {
            "transformer": SD3Transformer2DModel(
                sample_size=16,
                patch_size=2,
                in_channels=16,
                out_channels=16,
                num_layers=num_layers,
                attention_head_dim=8,
                num_attention_heads=num_heads or 4,
                joint_attention_dim=_JOINT_DIM,
                caption_projection_dim=8 * (num_heads or 4),  # must equal the inner dim
                pooled_projection_dim=2 * _JOINT_DIM,
                pos_embed_max_size=96,
                qk_norm=qk_norm,
                dual_attention_layers=dual,
            ),
            "text_encoder": _clip_text_encoder(True, _CLIP_HIDDEN, _JOINT_DIM, clip),
            "tokenizer": clip,
            "text_encoder_2": _clip_text_encoder(True, _CLIP_HIDDEN, _JOINT_DIM, clip),
            "tokenizer_2": clip,
            "text_encoder_3": _t5_encoder(_JOINT_DIM, t5),
            "tokenizer_3": t5,
            "vae": _vae(16, 0.0609),
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
            "image_encoder": None,
            "feature_extractor": None,
        }
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return components


def tiny_pipeline(model: str = "tiny-sd3", pipeline_class: Any = None, **options: Any) -> Any:
    """A tiny pipeline; by default the HeadHunter pipeline of the family, or ``pipeline_class`` (e.g. diffusers'
    ``StableDiffusion3Pipeline``) built on the same components. ``options`` go to :func:`tiny_components`."""
    components = tiny_components(model, **options)
    if pipeline_class is None:
        from headhunter.pipelines import HeadHunterChromaPipeline, HeadHunterFluxPipeline, HeadHunterSD3Pipeline

        pipeline_class = {"tiny-flux": HeadHunterFluxPipeline,
                          "tiny-chroma": HeadHunterChromaPipeline}.get(model.lower(), HeadHunterSD3Pipeline)
    return build_pipeline(pipeline_class, components)


def toy_pipeline_path(name: str = "toy-shapes") -> Path:
    """The folder of a shipped toy model (a diffusers pipeline folder)."""
    if name.lower() not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
    return Path(__file__).parent / "testbed" / name.lower()


def toy_pipeline(name: str = "toy-shapes", pipeline_class: Any = None, dtype: Any = torch.float32) -> Any:
    """A trained toy model, loaded offline from the package: ``toy-shapes`` draws the prompts of
    :mod:`headhunter.testbed.data` ("a red circle on a blue background, top left[, warm light]") at 32×32;
    ``toy-scenes`` those of :mod:`headhunter.testbed.scenes` ("a red circle left of a blue square on a white
    background[, warm light]").
    Call it with :data:`TOY_CALL` for the settings it is measured with.

        >>> pipe = toy_pipeline()
        >>> image = pipe("a yellow square on a black background, center", **TOY_CALL).images[0]
    """
    if pipeline_class is None:
        from headhunter.pipelines import HeadHunterSD3Pipeline

        pipeline_class = HeadHunterSD3Pipeline
    with _no_loading_bars():  # 12 MB from the package: two progress bars would only be noise
        pipe = pipeline_class.from_pretrained(toy_pipeline_path(name), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def _no_loading_bars() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            diffusers_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()


def build_pipeline(pipeline_class: Any, components: dict) -> Any:
    """``pipeline_class(**components)``, passing only the components its constructor takes."""
    import inspect

    accepted = set(inspect.signature(pipeline_class.__init__).parameters)
    pipe = pipeline_class(**{k: v for k, v in components.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Layout types of :func:`tiny_transformer`.
TINY_TRANSFORMERS = ("sd3", "flux", "chroma", "flux2", "qwenimage", "zimage", "wan")


def tiny_transformer(model_type: str, batch: int = 2, seed: int = 0) -> tuple[Any, dict]:
    """A tiny random-weight transformer of the real class for ``model_type`` (a key of
    :data:`headhunter.heads.MODELS`), and the inputs of one forward with ``batch`` rows (random latents and text
    embeddings, positions and masks as its pipeline makes them; Qwen-Image's and Z-Image's texts of two lengths, so
    their attention masks pad). Two heads of 16 channels per layer (the SD3 one: 4 heads of 8)."""
    import diffusers

    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    torch.manual_seed(seed)  # the weights
    image, text = 16, 6
    if model_type == "sd3":
        model = tiny_components("tiny-sd3")["transformer"]
        config = model.config
        side = int(image**0.5) * config.patch_size
        inputs = dict(hidden_states=randn(batch, config.in_channels, side, side),
                      encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
                      pooled_projections=randn(batch, config.pooled_projection_dim), timestep=torch.full((batch,), 500.0))
    elif model_type in ("flux", "chroma", "flux2"):
        common = dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=16)
        if model_type == "flux":
            model = diffusers.FluxTransformer2DModel(**common, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
            extra = dict(pooled_projections=randn(batch, 16), img_ids=_grid_ids(image, 3), txt_ids=torch.zeros(text, 3))
        elif model_type == "chroma":
            model = diffusers.ChromaTransformer2DModel(**common, axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
                                                       approximator_hidden_dim=32, approximator_layers=1)
            extra = dict(img_ids=_grid_ids(image, 3), txt_ids=torch.zeros(text, 3))
        else:
            model = diffusers.Flux2Transformer2DModel(**common, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
            extra = dict(img_ids=_grid_ids(image, 4)[None].expand(batch, -1, -1),
                         txt_ids=torch.zeros(batch, text, 4), guidance=torch.full((batch,), 3.5))
        inputs = dict(hidden_states=randn(batch, image, 8), encoder_hidden_states=randn(batch, text, 16),
                      timestep=torch.full((batch,), 0.5), **extra)
    elif model_type == "qwenimage":
        model = diffusers.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                                                      attention_head_dim=16, num_attention_heads=2,
                                                      joint_attention_dim=16, axes_dims_rope=(4, 6, 6))
        mask = torch.ones(batch, text, dtype=torch.long)
        mask[1:, text - 2 :] = 0  # the second prompt is shorter
        inputs = dict(hidden_states=randn(batch, image, 16), encoder_hidden_states=randn(batch, text, 16),
                      encoder_hidden_states_mask=mask, timestep=torch.full((batch,), 0.5), img_shapes=[[(1, 4, 4)]] * batch)
    elif model_type == "zimage":
        model = diffusers.ZImageTransformer2DModel(in_channels=4, dim=32, n_layers=3, n_refiner_layers=1, n_heads=2,
                                                   n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6],
                                                   axes_lens=[64, 32, 32])
        inputs = dict(x=[randn(4, 1, 8, 8) for _ in range(batch)], t=torch.full((batch,), 0.5),
                      cap_feats=[randn(text - 2 * (i % 2), 16) for i in range(batch)])
    elif model_type == "wan":
        model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                                in_channels=16, out_channels=16, text_dim=16, freq_dim=32, ffn_dim=32,
                                                num_layers=3, rope_max_seq_len=32)
        inputs = dict(hidden_states=randn(batch, 16, 2, 8, 8), timestep=torch.full((batch,), 500),
                      encoder_hidden_states=randn(batch, text, 16))
    else:
        raise ValueError(f"unknown model type {model_type!r}; choose one of {', '.join(TINY_TRANSFORMERS)}")
    return model.eval(), inputs


def _grid_ids(tokens: int, axes: int) -> torch.Tensor:
    """Position ids of a square latent grid: (0, row, column[, 0]) per token."""
    side = int(tokens**0.5)
    ids = torch.zeros(tokens, axes)
    ids[:, 1] = torch.arange(tokens) // side
    ids[:, 2] = torch.arange(tokens) % side
    return ids


#: Layout types of :func:`tiny_modular_pipeline` (full modular pipelines: text encoder, VAE, transformer, guider) of
#: the image models; ``"wan"`` (video, run as an image model with one frame) is also built.
TINY_MODULAR = ("flux2", "qwenimage", "zimage")


def tiny_qwen_tokenizer() -> Any:
    """A character-level ``Qwen2TokenizerFast`` (one token per ASCII character, ``<|endoftext|>`` as padding) with a
    chat template that keeps the message text, for the Qwen text encoders of FLUX.2 Klein and Qwen-Image."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tokenizer


def tiny_modular_pipeline(model_type: str = "qwenimage", seed: int = 0) -> Any:
    """A tiny random-weight diffusers modular pipeline of the real blocks — FLUX.2 Klein base (``"flux2"``, Qwen3 text
    encoder), Qwen-Image (``"qwenimage"``, Qwen2.5-VL text encoder), Z-Image (``"zimage"``, Qwen3 text encoder) or
    Wan 2.1 text-to-video (``"wan"``, UMT5 text encoder) — with tiny text encoder, tokenizer, VAE and
    transformer, wrapped as a :class:`~headhunter.pipelines.HeadHunterModularPipeline`. Images are 32 px; calls take
    :data:`TINY_MODULAR_CALL` (a short text length for speed)."""
    import diffusers

    from headhunter.pipelines import HeadHunterModularPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    vocab = len(tokenizer)
    if model_type == "flux2":
        from diffusers.modular_pipelines.flux2.modular_blocks_flux2_klein_base import Flux2KleinBaseAutoBlocks
        from transformers import Qwen3Config, Qwen3ForCausalLM

        # 28 layers, as the real one: the blocks read hidden states 9, 18 and 27
        text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=8, intermediate_size=16,
                                                    num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=2,
                                                    head_dim=4, bos_token_id=None, eos_token_id=2))
        vae = diffusers.AutoencoderKLFlux2(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                           latent_channels=2, norm_num_groups=4)
        transformer = diffusers.Flux2Transformer2DModel(
            patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=24, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
        blocks = Flux2KleinBaseAutoBlocks()
    elif model_type == "qwenimage":
        from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageAutoBlocks
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        config = Qwen2_5_VLConfig(
            text_config=dict(vocab_size=vocab, bos_token_id=None, eos_token_id=2, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2,
                             rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                               patch_size=2, window_size=4, fullatt_block_indexes=[0]))
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
        vae = diffusers.AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                               temperal_downsample=[False], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        transformer = diffusers.QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=16, axes_dims_rope=(4, 6, 6))
        blocks = QwenImageAutoBlocks()
    elif model_type == "zimage":
        from diffusers.modular_pipelines.z_image.modular_blocks_z_image import ZImageAutoBlocks
        from transformers import Qwen3Config, Qwen3Model

        text_encoder = Qwen3Model(Qwen3Config(vocab_size=vocab, hidden_size=16, intermediate_size=16,
                                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                              head_dim=8, bos_token_id=None, eos_token_id=2))
        vae = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                                      norm_num_groups=4, shift_factor=0.0, scaling_factor=1.0)
        transformer = diffusers.ZImageTransformer2DModel(in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
                                                         n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6],
                                                         axes_lens=[256, 32, 32])
        blocks = ZImageAutoBlocks()
    elif model_type == "wan":
        from diffusers.modular_pipelines.wan.modular_blocks_wan import WanBlocks
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = tiny_t5_tokenizer()
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                   num_heads=2, relative_attention_num_buckets=8))
        vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1,
                                         temperal_downsample=[False])
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3, rope_max_seq_len=32)
        blocks = WanBlocks()
    else:
        raise ValueError(f"unknown modular model type {model_type!r}; choose one of {', '.join(TINY_MODULAR)}, wan")
    if model_type == "wan":
        scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      flow_shift=3.0)
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    modular = blocks.init_pipeline()
    modular.update_components(text_encoder=text_encoder.eval(), tokenizer=tokenizer, vae=vae.eval(),
                              transformer=transformer.eval(), scheduler=scheduler)
    pipe = HeadHunterModularPipeline(modular, name_or_path=f"tiny-{model_type}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Call arguments that keep the tiny modular pipelines fast (FLUX.2 and Z-Image pad every prompt to 512 tokens by
#: default).
TINY_MODULAR_CALL = {"flux2": {"max_sequence_length": 32}, "qwenimage": {}, "zimage": {"max_sequence_length": 32},
                     "wan": {"max_sequence_length": 16}}
