"""``headhunter.perturb``: perturb given heads for every row of a transformer's forward — the building block of
guidance loops that run the perturbed pass on its own (diffusers' guiders, modular pipelines, your own sampler)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch

from ..heads import HeadLayout, HeadSet, HeadSetLike, unwrap_compiled
from .install import PerturbationSession, installed_session
from .plan import shared_prefix_layer
from .targets import check_target_scope

__all__ = ["check_scope_layers", "execution_device", "per_row_heads", "perturb", "perturbation",
           "softness_per_layer"]


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


def softness_per_layer(
    layout: HeadLayout, heads: HeadSetLike | Sequence[HeadSetLike], softness: float, device: torch.device
) -> tuple[dict[int, torch.Tensor], list[HeadSet]]:
    """Per-layer u on ``device``, made once: ``{layer: u}`` for the layers some row perturbs, u [heads] for one head
    set (every row alike) or [rows, heads] for a list of head sets (one per row of the batch). Also returns the head
    sets, resolved against the model (one, or one per row)."""
    per_row = per_row_heads(heads)
    chosen = [HeadSet.coerce(h).resolve(layout) for h in (heads if per_row else [heads])]
    tables = [h.softness_map(layout, softness) for h in chosen]
    u = torch.zeros(len(tables), layout.num_layers, layout.num_heads, dtype=torch.float32)
    for row, table in enumerate(tables):
        for (layer, head), value in table.items():
            u[row, layer, head] = value
    layers = sorted({layer for table in tables for layer, _ in table})
    u = u.to(device)  # one transfer; each layer's u its own tensor (a compiled graph guards on inputs that alias)
    per_layer = {layer: (u[:, layer] if per_row else u[0, layer]).clone() for layer in layers}
    return per_layer, chosen


def per_row_heads(heads: Any) -> bool:
    """Whether ``heads`` is a list of head sets, one per row (``["L13H17", None, HeadSet(...)]``), rather than one
    head set spelled as a list of ``(layer, head[, u])`` tuples (``[(13, 17), (2, 4, 0.5)]``) or empty."""
    return isinstance(heads, (list, tuple)) and len(heads) > 0 and not all(isinstance(v, tuple) for v in heads)


def execution_device(transformer: torch.nn.Module) -> torch.device:
    """Where ``transformer``'s weights are (CPU for a model on the meta device, e.g. offloaded)."""
    parameter = next(unwrap_compiled(transformer).parameters(), None)
    return parameter.device if parameter is not None and parameter.device.type != "meta" else torch.device("cpu")


@contextmanager
def perturbation(
    transformer: torch.nn.Module,
    heads: HeadSetLike | Sequence[HeadSetLike],
    *,
    softness: float = 1.0,
    target: str = "identity",
    scope: str = "joint",
    text_len: int | None = None,
    share_prefix: bool | int = False,
) -> Iterator[PerturbationSession]:
    """Install ``heads``' perturbation on ``transformer`` for the body, switched off: each forward that should be
    perturbed runs inside ``session.branch(perturbed=True)``. This is :func:`perturb` for loops that run unperturbed
    and perturbed passes in turn (:class:`~headhunter.guiders.HeadHunterGuidance`): one installation for many
    passes, so a compiled transformer keeps its graphs.

    ``heads`` is one head set for every row, or a list of head sets, one per row of the batch. ``share_prefix``
    (True: at the first perturbed layer; an int n: at layer n or the first perturbed layer, whichever comes first;
    False: nowhere) installs prefix reuse (:mod:`.prefix`): a pass in ``branch(prefix="record")`` keeps the output of
    the blocks before that layer and the next ``branch(perturbed=True, prefix="replay")`` starts from it. Arguments
    otherwise as :func:`perturb`. The layers' own processors and blocks are back on exit, also when the body raises.
    """
    layout = HeadLayout.from_transformer(transformer)
    per_layer, _ = softness_per_layer(layout, heads, softness, execution_device(transformer))
    prefix_layer = shared_prefix_layer(share_prefix, min(per_layer, default=0))
    with _installed(transformer, layout, per_layer, target, scope, text_len, prefix_layer) as session:
        yield session


@contextmanager
def _installed(transformer: torch.nn.Module, layout: HeadLayout, per_layer: dict[int, torch.Tensor], target: str,
               scope: str, text_len: int | None, prefix_layer: int) -> Iterator[PerturbationSession]:
    check_target_scope(target, scope)
    check_scope_layers(layout, per_layer, scope, text_len)

    def load(session: PerturbationSession) -> None:
        session.load_every_row(per_layer, target, scope, text_len)

    with installed_session(transformer, layout, per_layer, load, target=target, scope=scope, fork=False,
                           prefix_layer=prefix_layer) as session:
        yield session


@contextmanager
def perturb(
    transformer: torch.nn.Module,
    heads: HeadSetLike | Sequence[HeadSetLike],
    *,
    softness: float = 1.0,
    target: str = "identity",
    scope: str = "joint",
    text_len: int | None = None,
) -> Iterator[HeadSet | list[HeadSet]]:
    """Perturb ``heads`` of ``transformer`` in every forward this thread makes inside the block; the layers' own
    processors come back on exit, also when the block raises or is interrupted.

    Example::

        with headhunter.perturb(pipe.transformer, "L13H17@0.5,L2", target="identity", scope="joint"):
            noise_perturbed = pipe.transformer(...)

    Args:
        transformer: any transformer of :data:`headhunter.heads.MODELS` (compiled or not).
        heads: a spec (``"L13H17@0.5,L2"``), a preset name, a :class:`HeadSet`, ... — or a list of them, one per
            row of the batch the block's forwards take (``["L13H17", "", "L2"]``: each row its own heads, a row with
            none left bit for bit).
        softness: u for heads without their own ``@u``; u = 0 leaves a head's output bit for bit.
        target: ``identity``, ``uniform``, ``query_mean`` or ``max``.
        scope: ``joint`` (the whole sequence) or ``image`` (identity only: each image token attends to itself and
            to the text, as diffusers' SD3 PAG). On single-stream layers the image scope needs ``text_len``, the text
            tokens at the start of the sequence (FLUX.1, Chroma, FLUX.2); Z-Image's single stream is not supported.
        text_len: see ``scope``.
    Yields:
        the heads, resolved against the model (a list, one per row, when given a list).

    Only this thread's forwards are perturbed: another thread may run the same transformer unperturbed meanwhile.
    The transformer's lock is held inside the block, so a headhunter call on it from another thread waits. Blocks
    do not nest on one transformer. A perturbed layer whose processor computes its attention without diffusers'
    ``dispatch_attention_fn`` raises RuntimeError instead of silently perturbing nothing.
    """
    layout = HeadLayout.from_transformer(transformer)
    per_layer, chosen = softness_per_layer(layout, heads, softness, execution_device(transformer))
    with _installed(transformer, layout, per_layer, target, scope, text_len, 0) as session:
        session.active = True
        yield chosen if per_row_heads(heads) else chosen[0]
