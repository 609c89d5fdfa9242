"""The model table and :class:`HeadLayout`: which transformers headhunter addresses and which module each of their
attention layers is (``L{layer}`` numbered globally through the transformer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .headset import Head, HeadSet

__all__ = ["MODELS", "HeadLayout", "unwrap_compiled"]


def unwrap_compiled(module: Any) -> Any:
    """The model inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), or ``module`` itself."""
    return getattr(module, "_orig_mod", module)




# The transformers whose heads headhunter addresses: for each layout type, the transformer class and its attention
# layers as (block list, attention attribute, kind) in the order layers are numbered (L0 = the first block of the
# first list). Refiner blocks that run before the main stack (Z-Image) and cross-attention (Wan's attn2, SD3.5's
# image-only attn2) are not addressed.
MODELS: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "sd3": ("SD3Transformer2DModel", (("transformer_blocks", "attn", "joint"),)),
    "flux": ("FluxTransformer2DModel", (("transformer_blocks", "attn", "double"),
                                        ("single_transformer_blocks", "attn", "single"))),
    "chroma": ("ChromaTransformer2DModel", (("transformer_blocks", "attn", "double"),
                                            ("single_transformer_blocks", "attn", "single"))),
    "flux2": ("Flux2Transformer2DModel", (("transformer_blocks", "attn", "double"),
                                          ("single_transformer_blocks", "attn", "single"))),
    "qwenimage": ("QwenImageTransformer2DModel", (("transformer_blocks", "attn", "double"),)),
    "zimage": ("ZImageTransformer2DModel", (("layers", "attention", "single"),)),
    "wan": ("WanTransformer3DModel", (("blocks", "attn1", "self"),)),
}


@dataclass(frozen=True)
class HeadLayout:
    """How many attention layers and heads a transformer has, and which module each layer is.

    Attributes:
        model_type: a key of :data:`MODELS`: ``"sd3"`` (SD3 / SD3.5 MMDiT), ``"flux"`` (FLUX.1), ``"chroma"``,
            ``"flux2"``, ``"qwenimage"``, ``"zimage"`` or ``"wan"`` (Wan 2.x).
        num_layers: number of addressable attention layers (SD3-medium 24, FLUX.1 57).
        num_heads: heads per layer (24 for both families).
        head_dim: channels per head.
        num_double_layers: for models with two block lists (FLUX.1, Chroma, FLUX.2): layers ``0..num_double_layers-1``
            are the double-stream blocks, the rest single-stream.
    """

    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    num_double_layers: int = 0

    @classmethod
    def from_transformer(cls, transformer: Any) -> "HeadLayout":
        transformer = unwrap_compiled(transformer)
        classes = {type(transformer).__name__} | {base.__name__ for base in type(transformer).__mro__}
        for model_type, (class_name, stacks) in MODELS.items():
            if class_name in classes and all(hasattr(transformer, blocks) for blocks, _, _ in stacks):
                counts = [len(getattr(transformer, blocks)) for blocks, _, _ in stacks]
                first = getattr(getattr(transformer, stacks[0][0])[0], stacks[0][1])
                heads = int(first.heads)
                head_dim = int(getattr(first, "inner_dim", 0) or first.to_q.out_features) // heads
                return cls(model_type, sum(counts), heads, head_dim, num_double_layers=counts[0] if len(counts) > 1 else 0)
        supported = ", ".join(class_name for class_name, _ in MODELS.values())
        raise ValueError(f"{type(transformer).__name__} is not supported: headhunter addresses the heads of {supported}")

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def _locate(self, layer: int) -> tuple[str, str, str, int]:
        """(block list, attention attribute, kind, index in the list) of ``layer``."""
        stacks = MODELS[self.model_type][1]
        if len(stacks) > 1 and layer >= self.num_double_layers:
            return (*stacks[1], layer - self.num_double_layers)
        return (*stacks[0], layer)

    def block(self, transformer: Any, layer: int) -> Any:
        """The transformer block that holds ``layer``'s attention."""
        blocks, _, _, index = self._locate(layer)
        return getattr(unwrap_compiled(transformer), blocks)[index]

    def attention(self, transformer: Any, layer: int) -> Any:
        """The attention module of ``layer`` (cross-attention and SD3.5's image-only ``attn2`` are never addressed)."""
        return getattr(self.block(transformer, layer), self._locate(layer)[1])

    def stack(self, layer: int) -> str:
        """The name of the block list that holds ``layer`` (``transformer_blocks``, ``single_transformer_blocks``,
        ``layers``, ``blocks``)."""
        return self._locate(layer)[0]

    def block_kind(self, layer: int) -> str:
        """``"joint"`` (SD3), ``"double"`` or ``"single"`` (FLUX.1, Chroma, FLUX.2; Qwen-Image is double, Z-Image
        single), ``"self"`` (Wan's self-attention)."""
        return self._locate(layer)[2]

    def module_name(self, layer: int) -> str:
        blocks, attribute, _, index = self._locate(layer)
        return f"{blocks}.{index}.{attribute}"

    def describe(self) -> str:
        text = f"layers 0-{self.num_layers - 1} (L0..L{self.num_layers - 1}), heads 0-{self.num_heads - 1}"
        if self.num_double_layers:
            text += f"; layers 0-{self.num_double_layers - 1} are double-stream, the rest single-stream"
        return text

    def all_heads(self) -> "HeadSet":
        return HeadSet([Head(layer, head) for layer in range(self.num_layers) for head in range(self.num_heads)])
