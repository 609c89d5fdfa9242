"""Installing a perturbation plan on a transformer for the duration of a call.

Each transformer gets one :class:`PerturbationSession`, made the first time it is perturbed and reused by every
later call: one SoftPAG processor per layer and the fork hooks, all the same Python objects each time. A pipeline
installs them once per call (not per step), loads the call's plan into the session, switches the perturbed branch on
and off per step (:attr:`PerturbationSession.active`), and restores the stock processors and removes the hooks when
the call ends or raises. Reusing the objects is what lets a compiled transformer keep its graphs from call to call:
torch.compile guards on the processors' types and on the Python values they and the hooks read (the plan's shapes,
which blocks fork), never on the plan's tensor values; it does not guard on a module's hooks at all, which is why every
block carries its hook in every perturbed call and the hook itself decides whether to fork.

A transformer that is compiled (``torch.compile(t)``, ``t.compile()`` or ``compile_repeated_blocks()``) gets a
processor on every layer, so the set of installed processors does not change with the heads either; an eager one
only on the layers the plan perturbs.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..heads import HeadLayout, unwrap_compiled
from ..locking import holding_transformer
from .plan import PerturbationPlan
from .processors import SoftPAGProcessor, make_perturbable

__all__ = ["PerturbationSession", "compile_mode", "perturbed_heads"]

# Positional order of the tensors a block forward takes first (SD3 joint, FLUX double and single blocks alike, also
# when gradient checkpointing calls them positionally).
_BLOCK_INPUTS = ("hidden_states", "encoder_hidden_states", "temb")
# Per-row tensors a block takes by name: those above, and Chroma's text-padding mask.
_FORKED_BY_NAME = (*_BLOCK_INPUTS, "attention_mask")


class _ForkHook:
    """Forward pre-hook of one block: appends the perturbed rows (copies of conditional rows) to the block's inputs
    when the block is at or after the fork. One per block, made once; ``on`` is set per call. (A plain attribute
    rather than the layer's index: blocks compiled on their own then share one graph per value of ``on``.)"""

    def __init__(self, session: "PerturbationSession"):
        self.session = session
        self.on = False

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if not self.on:
            return args, kwargs
        fork = self.session.fork
        args = tuple(fork(a) if i < len(_BLOCK_INPUTS) else a for i, a in enumerate(args))
        # a new dict rather than writing into the caller's (torch.compile traces these hooks)
        kwargs = {name: fork(value) if name in _FORKED_BY_NAME else value for name, value in kwargs.items()}
        return args, kwargs


class _EagerForkHook(_ForkHook):
    """The same hook for blocks compiled on their own (``compile_repeated_blocks``): there torch.compile calls a hook
    as a frame of its own, outside the block's graph, and would specialise it on every block type, batch size and
    stride it meets; it is two tensor ops, so it runs eagerly instead."""

    @torch.compiler.disable
    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return super().__call__(module, args, kwargs)


class PerturbationSession:
    """The SoftPAG machinery of one transformer and the plan of the call in progress.

    Attributes read in the forward (loaded from the plan by :meth:`load`): ``active`` (the perturbed branch runs on
    this step), ``base_rows``, ``perturbed_rows``, ``target``, ``scope``, ``text_len`` and ``fork_index``; each
    processor's ``u`` ([perturbed rows, heads] on the execution device) and each block hook's ``on``.
    """

    def __init__(self, layout: HeadLayout):
        self.layout = layout
        self.processors = [SoftPAGProcessor(self, layout.block_kind(layer)) for layer in range(layout.num_layers)]
        # Made once: hooks must be the same objects in every call. torch.compile does not guard on a module's hooks
        # (torch._dynamo.config.skip_nnmodule_hook_guards), so every block carries one in every perturbed call and
        # the hook decides whether to fork from values the compiled graph does guard on.
        self.block_hooks = [_ForkHook(self) for _ in range(layout.num_layers)]
        self.eager_block_hooks = [_EagerForkHook(self) for _ in range(layout.num_layers)]
        self.norm_hook = self._fork_norm_inputs
        self.plan: PerturbationPlan | None = None
        self.active = False
        self._clear()

    def _clear(self) -> None:
        self.base_rows = self.perturbed_rows = 0
        self.target, self.scope, self.text_len = "identity", "joint", None
        self.fork_index = None
        for processor in self.processors:
            processor.u = None
        for hook in (*self.block_hooks, *self.eager_block_hooks):
            hook.on = False

    def load(self, plan: PerturbationPlan | None) -> None:
        self.plan = plan
        self._clear()
        if plan is None:
            return
        self.base_rows, self.perturbed_rows = plan.base_rows, plan.num_perturbed
        self.target, self.scope, self.text_len = plan.target, plan.scope, plan.text_len
        self.fork_index = plan.fork_index
        for layer, processor in enumerate(self.processors):
            processor.u = plan.layer_u[layer]
            self.block_hooks[layer].on = self.eager_block_hooks[layer].on = layer >= plan.fork_layer

    # the fork: perturbed rows are copies of conditional rows, appended where the shared prefix ends ------------------
    def fork(self, x: Any) -> Any:
        if self.active and isinstance(x, torch.Tensor) and x.shape[0] == self.base_rows:
            return torch.cat([x, x.index_select(0, self.fork_index)])
        return x

    def _fork_norm_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # AdaLayerNormContinuous(x, conditioning_embedding): x already has every row, the embedding does not yet
        if len(args) > 1:
            args = (args[0], self.fork(args[1]), *args[2:])
        if "conditioning_embedding" in kwargs:
            kwargs = {**kwargs, "conditioning_embedding": self.fork(kwargs["conditioning_embedding"])}
        return args, kwargs


_sessions: "weakref.WeakKeyDictionary[torch.nn.Module, PerturbationSession]" = weakref.WeakKeyDictionary()


def _session_for(module: torch.nn.Module, layout: HeadLayout) -> PerturbationSession:
    session = _sessions.get(module)
    if session is None or session.layout != layout:
        session = _sessions[module] = PerturbationSession(layout)
    return session


def compile_mode(transformer: torch.nn.Module) -> str | None:
    """How ``transformer`` runs: ``"whole"`` (an ``OptimizedModule`` or ``transformer.compile()``), ``"blocks"``
    (blocks compiled on their own, as ``compile_repeated_blocks()`` does) or None (eager)."""
    module = unwrap_compiled(transformer)
    if module is not transformer or getattr(module, "_compiled_call_impl", None) is not None:
        return "whole"
    layout = HeadLayout.from_transformer(module)
    if any(getattr(layout.block(module, layer), "_compiled_call_impl", None) is not None
           for layer in range(layout.num_layers)):
        return "blocks"
    return None


def _check_parallel(originals: dict[int, Any], plan: PerturbationPlan) -> None:
    if plan.target == "identity" and plan.scope == "joint":
        return  # T·V = V is row-local: every rank's slice of the sequence is enough
    if any(getattr(p, "_parallel_config", None) is not None for p in originals.values()):
        raise ValueError(
            f"pag_target={plan.target!r} with pag_scope={plan.scope!r} needs the whole sequence, but this transformer "
            "runs context-parallel (each rank holds a slice of it); use pag_target='identity' with pag_scope='joint', "
            "or run without a parallel config"
        )


@contextmanager
def perturbed_heads(
    transformer: torch.nn.Module, plan: PerturbationPlan, *, active: bool = True
) -> Iterator[PerturbationSession]:
    """Install SoftPAG for ``plan`` on ``transformer``; restore the stock processors (and remove the fork hooks) on
    exit, also when the body raises.

    Inside the context, call the transformer with the plan's ``base_rows``; while ``session.active`` is True it
    returns ``plan.num_rows`` rows: the base rows followed by one perturbed row per entry of ``plan.fork_src``. With
    ``session.active = False`` a call is the stock computation (the pipelines use this for steps outside
    ``pag_interval``, without reinstalling anything). The transformer's lock is held throughout.
    """
    layout = HeadLayout.from_transformer(transformer)
    if tuple(plan.u.shape[1:]) != (layout.num_layers, layout.num_heads):
        raise ValueError(
            f"plan covers {tuple(plan.u.shape[1:])} layers × heads but the transformer has "
            f"{(layout.num_layers, layout.num_heads)}"
        )
    if plan.scope == "image" and plan.text_len is None and any(layout.block_kind(layer) == "single"
                                                               for layer in plan.layers):
        raise ValueError(f"pag_scope='image' on the single-stream layers of {layout.model_type} needs the plan's "
                         "text_len")
    module = unwrap_compiled(transformer)
    with holding_transformer(module):
        session = _session_for(module, layout)
        if session.plan is not None:
            raise RuntimeError("perturbed_heads is already active on this transformer (it does not nest)")
        parameter = next(module.parameters(), None)
        if parameter is not None and parameter.device != plan.device and parameter.device.type != "meta" \
                and not hasattr(module, "_hf_hook"):  # offloaded models move to the plan's device themselves
            plan = plan.to(parameter.device)
        mode = compile_mode(transformer)
        layers = plan.layers if mode is None else range(layout.num_layers)
        hooks = session.eager_block_hooks if mode == "blocks" else session.block_hooks
        originals = {layer: layout.attention(module, layer).processor for layer in layers}
        _check_parallel(originals, plan)
        for layer, original in originals.items():
            make_perturbable(original, layout.block_kind(layer))
        handles = []
        try:
            session.load(plan)
            session.active = active
            for layer, original in originals.items():
                processor = session.processors[layer]
                processor.attach(original)
                layout.attention(module, layer).set_processor(processor)
            for layer in range(layout.num_layers):
                handles.append(layout.block(module, layer).register_forward_pre_hook(hooks[layer], with_kwargs=True))
            handles.append(module.norm_out.register_forward_pre_hook(session.norm_hook, with_kwargs=True))
            yield session
        finally:
            for handle in handles:
                handle.remove()
            for layer, original in originals.items():
                layout.attention(module, layer).set_processor(original)
                session.processors[layer].attach(None)
            session.active = False
            session.load(None)
