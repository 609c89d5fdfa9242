"""``headhunter.perturb``: perturb given heads for every row of a transformer's forward — the building block of
guidance loops that run the perturbed pass on its own (diffusers' guiders, modular pipelines, your own sampler)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

from ..heads import HeadLayout, HeadSet, HeadSetLike, unwrap_compiled
from .install import installed_session
from .targets import check_target_scope

__all__ = ["check_scope_layers", "perturb"]


def check_scope_layers(layout: HeadLayout, layers: Iterable[int], scope: str, text_len: int | None = None) -> None:
    """ValueError unless ``scope`` is defined on every layer of ``layers``: the ``image`` scope on a single-stream
    layer needs ``text_len`` (the text tokens before the image ones), and Z-Image's single stream has no such split."""
    if scope != "image":
        return
    for layer in sorted(layers):
        if layout.block_kind(layer) != "single":
            continue
        if layout.model_type == "zimage":
            raise ValueError("pag_scope='image' is not supported on Z-Image's single-stream layers; use scope='joint'")
        if text_len is None:
            raise ValueError(f"pag_scope='image' on L{layer}, a single-stream layer of {layout.model_type}, needs "
                             "text_len (the text tokens before the image ones)")


@contextmanager
def perturb(
    transformer: torch.nn.Module,
    heads: HeadSetLike,
    *,
    softness: float = 1.0,
    target: str = "identity",
    scope: str = "joint",
    text_len: int | None = None,
) -> Iterator[HeadSet]:
    """Perturb ``heads`` of ``transformer`` in every forward this thread makes inside the block; the layers' own
    processors come back on exit, also when the block raises or is interrupted.

    Example::

        with headhunter.perturb(pipe.transformer, "L13H17@0.5,L2", target="identity", scope="joint"):
            noise_perturbed = pipe.transformer(...)

    Args:
        transformer: any transformer of :data:`headhunter.heads.MODELS` (compiled or not).
        heads: a spec (``"L13H17@0.5,L2"``), a preset name, a :class:`HeadSet`, ...
        softness: u for heads without their own ``@u``; u = 0 leaves a head's output bit for bit.
        target: ``identity``, ``uniform``, ``query_mean`` or ``max``.
        scope: ``joint`` (the whole sequence) or ``image`` (identity only: each image token attends to itself and
            to the text, as diffusers' SD3 PAG). On single-stream layers the image scope needs ``text_len``, the text
            tokens at the start of the sequence (FLUX.1, Chroma, FLUX.2); Z-Image's single stream is not supported.
        text_len: see ``scope``.
    Yields:
        the heads, resolved against the model.

    Only this thread's forwards are perturbed: another thread may run the same transformer unperturbed meanwhile.
    The transformer's lock is held inside the block, so a headhunter call on it from another thread waits. Blocks
    do not nest on one transformer. A perturbed layer whose processor computes its attention without diffusers'
    ``dispatch_attention_fn`` raises RuntimeError instead of silently perturbing nothing.
    """
    check_target_scope(target, scope)
    layout = HeadLayout.from_transformer(transformer)
    chosen = HeadSet.coerce(heads).resolve(layout)
    table = chosen.softness_map(layout, softness)
    check_scope_layers(layout, {layer for layer, _ in table}, scope, text_len)
    parameter = next(unwrap_compiled(transformer).parameters(), None)
    device = parameter.device if parameter is not None and parameter.device.type != "meta" else torch.device("cpu")
    per_layer: dict[int, torch.Tensor] = {}
    for (layer, head), u in table.items():
        per_layer.setdefault(layer, torch.zeros(layout.num_heads, dtype=torch.float32))[head] = u
    per_layer = {layer: u.to(device) for layer, u in per_layer.items()}  # (moved on to the activations' device once)

    def load(session: Any) -> None:
        session.load_every_row(per_layer, target, scope, text_len)

    with installed_session(transformer, layout, per_layer, load, target=target, scope=scope, fork=False) as session:
        session.active = True
        yield chosen
