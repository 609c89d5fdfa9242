"""Installing SoftPAG on a transformer for the duration of a call, and taking it off again.

Each transformer gets one :class:`PerturbationSession`, made the first time it is perturbed and reused by every
later call: one SoftPAG stand-in per layer and the fork hooks, all the same Python objects each time. A call
(:func:`perturbed_heads` for the pipelines, :func:`~headhunter.attention.perturb` for a guider or your own loop)
installs them once, loads its plan into the session, switches the perturbed branch on and off
(:attr:`PerturbationSession.active`, per thread), and restores the layers' own processors and removes the hooks when
it ends, raises or is interrupted. Reusing the objects is what lets a compiled transformer keep its graphs from call
to call: torch.compile guards on the processors' types and on the Python values they and the hooks read (the plan's
shapes, which blocks fork), never on the plan's tensor values; it does not guard on a module's hooks at all, which is
why every block carries its hook in every perturbed call and the hook itself decides whether to fork.

Scope: the session is active only in the thread that made the call, so a stock forward of the same transformer in
another thread (a second pipeline made with ``from_pipe``) runs through the stand-ins and hooks untouched.
:func:`installed` says what of headhunter is on a transformer right now; outside a call it is empty.

A transformer that is compiled (``torch.compile(t)``, ``t.compile()`` or ``compile_repeated_blocks()``) gets a
stand-in on every layer, so the set of installed processors does not change with the heads either; an eager one
only on the layers the call perturbs.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch

from ..heads import HeadLayout, unwrap_compiled
from ..locking import holding_transformer, lock_owner
from .dispatch import dispatch_patched, patched_modules
from .plan import PerturbationPlan
from .prefix import PrefixReuse, prefix_installed
from .processors import JointAttnDispatchProcessor, SoftPAGProcessor

__all__ = ["PerturbationSession", "around_next_call", "compile_mode", "installed", "perturbed_heads"]

# Per-row tensors a block takes, by name; positional arguments are matched to these names through the block's
# signature (gradient checkpointing calls blocks positionally, and Chroma's single-stream blocks take no
# encoder_hidden_states, so the positions differ between block types).
_PER_ROW = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask")
# Per-row entries of the ``joint_attention_kwargs`` a block passes on to its attention: an IP-Adapter's image tokens
# (a tensor on SD3 / SD3.5, a list of them on FLUX.1) and SD3's IP timestep embedding. Forked with the rows, so a
# perturbed row sees the image embeddings of the conditional row it copies.
_PER_ROW_ATTENTION = ("ip_hidden_states", "temb")
# The models whose blocks perturbed_heads can fork inside: SD3's joint blocks, FLUX.1's and Chroma's double- and
# single-stream blocks with an AdaLayerNormContinuous ``norm_out`` after them.
FORKING_MODELS = ("sd3", "flux", "chroma")


class _ForkHook:
    """Forward pre-hook of one block: appends the perturbed rows (copies of conditional rows) to the block's per-row
    inputs when the block is at or after the fork. One per block, made once; ``on`` is set per call. (A plain attribute
    rather than the layer's index: blocks compiled on their own then share one graph per value of ``on``.)

    Args:
        session: the transformer's session.
        positional: the names of the block's positional parameters, in order (from its ``forward`` signature).
    """

    def __init__(self, session: "PerturbationSession", positional: tuple[str, ...]):
        self.session = session
        self.positional = positional
        self.on = False

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if not self.on:
            return args, kwargs
        names = self.positional
        args = tuple(self._fork(names[i] if i < len(names) else "", a) for i, a in enumerate(args))
        # a new dict rather than writing into the caller's (torch.compile traces these hooks)
        kwargs = {name: self._fork(name, value) for name, value in kwargs.items()}
        return args, kwargs

    def _fork(self, name: str, value: Any) -> Any:
        fork = self.session.fork
        if name in _PER_ROW:
            return fork(value)
        if name == "joint_attention_kwargs" and value:
            return {key: _fork_entry(fork, entry) if key in _PER_ROW_ATTENTION else entry
                    for key, entry in value.items()}
        return value


def _fork_entry(fork: Callable[[Any], Any], entry: Any) -> Any:
    """A tensor forked, or each tensor of a list (FLUX.1 keeps one per loaded IP-Adapter)."""
    return [fork(v) for v in entry] if isinstance(entry, (list, tuple)) else fork(entry)


class _EagerForkHook(_ForkHook):
    """The same hook for blocks compiled on their own (``compile_repeated_blocks``): there torch.compile calls a hook
    as a frame of its own, outside the block's graph, and would specialise it on every block type, batch size and
    stride it meets; it is two tensor ops, so it runs eagerly instead."""

    @torch.compiler.disable
    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return super().__call__(module, args, kwargs)


def _positional_names(block: torch.nn.Module) -> tuple[str, ...]:
    parameters = inspect.signature(block.forward).parameters.values()
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class PerturbationSession:
    """The SoftPAG machinery of one transformer and the perturbation of the call in progress.

    Attributes read in the forward (loaded by :meth:`load` or :meth:`load_every_row`): ``active`` (the perturbed
    branch runs now, in this thread), ``base_rows`` (rows left alone: 0 when every row is perturbed),
    ``perturbed_rows`` (rows the plan appends; None when every row is perturbed), ``target``, ``scope``, ``text_len``
    and ``fork_index``; each stand-in's ``u`` and each block hook's ``on``.
    """

    def __init__(self, module: torch.nn.Module, layout: HeadLayout):
        self.layout = layout
        self.processors = [SoftPAGProcessor(self, layer, layout.block_kind(layer), layout.module_name(layer))
                           for layer in range(layout.num_layers)]
        # Made once: hooks must be the same objects in every call. torch.compile does not guard on a module's hooks
        # (torch._dynamo.config.skip_nnmodule_hook_guards), so every block carries one in every perturbed call and
        # the hook decides whether to fork from values the compiled graph does guard on.
        names = [_positional_names(layout.block(module, layer)) for layer in range(layout.num_layers)]
        self.block_hooks = [_ForkHook(self, n) for n in names]
        self.eager_block_hooks = [_EagerForkHook(self, n) for n in names]
        self.norm_hook = self._fork_norm_inputs
        self.plan: PerturbationPlan | None = None
        self.prefix = PrefixReuse()
        self.compiled_whole = False  # set per installation: every layer then has a stand-in and reads a u
        self.loaded = False
        self._thread = threading.local()  # .active: this thread's call has the branch on
        self._clear()

    @property
    def active(self) -> bool:
        """Whether the perturbed branch runs now *in this thread* (another thread's forward is never perturbed)."""
        return getattr(self._thread, "active", False)

    @active.setter
    def active(self, value: bool) -> None:
        self._thread.active = bool(value)

    def _clear(self) -> None:
        self.base_rows, self.perturbed_rows = 0, None
        self.target, self.scope, self.text_len = "identity", "joint", None
        self.fork_index = None
        self.prefix_layer = 0
        for processor in self.processors:
            processor.u = None
        for hook in (*self.block_hooks, *self.eager_block_hooks):
            hook.on = False

    def load(self, plan: PerturbationPlan | None) -> None:
        """Load a pipeline's plan (perturbed rows appended after ``plan.base_rows``), or unload (None)."""
        self.plan = plan
        self.loaded = plan is not None
        self._clear()
        if plan is None:
            return
        self.base_rows, self.perturbed_rows = plan.base_rows, plan.num_perturbed
        self.target, self.scope, self.text_len = plan.target, plan.scope, plan.text_len
        self.fork_index = plan.fork_index
        for layer, processor in enumerate(self.processors):
            processor.u = plan.layer_u[layer]
            self.block_hooks[layer].on = self.eager_block_hooks[layer].on = layer >= plan.fork_layer

    def load_every_row(self, u: dict[int, torch.Tensor], target: str, scope: str, text_len: int | None) -> None:
        """Perturb every row of a forward (:func:`perturb`): ``u[layer]`` on the layers it names, [heads] for every
        row alike or [rows, heads] for a batch of exactly that many rows, each with its own heads."""
        self.load(None)
        self.loaded = True
        self.target, self.scope, self.text_len = target, scope, text_len
        like = next(iter(u.values()), None)
        for layer, processor in enumerate(self.processors):
            if layer in u:
                processor.u = u[layer]
            elif self.compiled_whole and like is not None:  # one graph whatever the heads: every layer reads a u
                processor.u = torch.zeros_like(like)
        if like is not None and like.ndim == 2:
            self.perturbed_rows = like.shape[0]

    @contextmanager
    def branch(self, *, perturbed: bool, prefix: str | None = None) -> Iterator[None]:
        """One forward of this thread with the perturbation on (``perturbed``) or off, the blocks before the fork
        recording or replaying their outputs (``prefix``: None, ``"record"``, ``"replay"``; see
        :mod:`.prefix`); everything is off again when the forward returns, raises or is interrupted."""
        with self.prefix.pass_(prefix):
            self.active = perturbed
            try:
                yield
            finally:
                self.active = False

    # the fork: perturbed rows are copies of conditional rows, appended where the shared prefix ends ------------------
    def fork(self, x: Any) -> Any:
        if self.active and isinstance(x, torch.Tensor) and x.shape[0] == self.base_rows:
            if self.fork_index.device != x.device:  # offloaded models: follow the activations, once per call
                self.fork_index = self.fork_index.to(x.device)
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
        session = _sessions[module] = PerturbationSession(module, layout)
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


def _check_parallel(processors: Iterable[Any], target: str, scope: str) -> None:
    if target == "identity" and scope == "joint":
        return  # T·V = V is row-local: every rank's slice of the sequence is enough
    if any(getattr(p, "_parallel_config", None) is not None for p in processors):
        raise ValueError(
            f"pag_target={target!r} with pag_scope={scope!r} needs the whole sequence, but this transformer "
            "runs context-parallel (each rank holds a slice of it); use pag_target='identity' with pag_scope='joint', "
            "or run without a parallel config"
        )


@contextmanager
def installed_session(
    transformer: torch.nn.Module,
    layout: HeadLayout,
    layers: Iterable[int],
    load: Callable[[PerturbationSession], None],
    *,
    target: str,
    scope: str,
    fork: bool,
    prefix_layer: int = 0,
) -> Iterator[PerturbationSession]:
    """The transformer's session, loaded by ``load`` and installed on ``layers`` (every layer when the transformer is
    compiled) with the fork hooks when ``fork`` and prefix reuse on the blocks before ``prefix_layer`` (see
    :mod:`.prefix`), for the body; the transformer's lock is held throughout. On exit —
    also when the body raises or is interrupted — the layers' own processors are back, the hooks removed, diffusers'
    ``dispatch_attention_fn`` restored (when no other call needs it) and the lock released."""
    module = unwrap_compiled(transformer)
    mode = compile_mode(transformer)
    layers = sorted(set(layers)) if mode is None else range(layout.num_layers)
    with holding_transformer(module):
        session = _session_for(module, layout)
        originals = {layer: layout.attention(module, layer).processor for layer in layers}
        if session.loaded or any(isinstance(p, SoftPAGProcessor) for p in originals.values()):
            raise RuntimeError("a headhunter perturbation is already active on this transformer in this thread, and "
                               "a perturbation does not nest (perturb() inside perturb() or a pipeline call)")
        _check_parallel(originals.values(), target, scope)
        # SD3's joint layers dispatch through headhunter's own processor; every other layer through its module's name
        modules = {type(p).__module__ for layer, p in originals.items() if layout.block_kind(layer) != "joint"}
        handles = []
        with dispatch_patched(modules), prefix_installed(module, layout, session.prefix, prefix_layer):
            try:
                session.compiled_whole = mode == "whole"
                load(session)
                session.prefix_layer = prefix_layer
                for layer, original in originals.items():
                    stand_in = session.processors[layer]
                    stand_in.attach(original)
                    layout.attention(module, layer).set_processor(stand_in)
                if fork:
                    hooks = session.eager_block_hooks if mode == "blocks" else session.block_hooks
                    for layer in range(layout.num_layers):
                        block = layout.block(module, layer)
                        handles.append(block.register_forward_pre_hook(hooks[layer], with_kwargs=True))
                    handles.append(module.norm_out.register_forward_pre_hook(session.norm_hook, with_kwargs=True))
                yield session
            finally:
                session.active = False
                for handle in handles:
                    handle.remove()
                for layer, original in originals.items():
                    layout.attention(module, layer).set_processor(original)
                session.load(None)


@contextmanager
def perturbed_heads(
    transformer: torch.nn.Module, plan: PerturbationPlan, *, active: bool = True
) -> Iterator[PerturbationSession]:
    """Install SoftPAG for ``plan`` on ``transformer``; restore the layers' own processors (and remove the fork
    hooks) on exit, also when the body raises or is interrupted.

    Inside the context, call the transformer with the plan's ``base_rows``; while ``session.active`` is True (in this
    thread) it returns ``plan.num_rows`` rows: the base rows followed by one perturbed row per entry of
    ``plan.fork_src``. With ``session.active = False`` a call is the stock computation (the pipelines use this for
    steps outside ``pag_interval``, without reinstalling anything). The transformer's lock is held throughout.

    The perturbed rows are forked inside the transformer, which is defined for the block types of SD3 / SD3.5,
    FLUX.1 and Chroma (:data:`FORKING_MODELS`); other models are refused (use :func:`headhunter.perturb`, which
    perturbs every row of a forward, on them).
    """
    layout = HeadLayout.from_transformer(transformer)
    if layout.model_type not in FORKING_MODELS:
        raise ValueError(
            f"perturbed_heads forks rows inside the transformer, which is defined for the blocks of "
            f"{', '.join(FORKING_MODELS)}; {type(unwrap_compiled(transformer)).__name__} is {layout.model_type!r}: "
            "use headhunter.perturb(transformer, heads) for a separate perturbed pass (HeadHunterGuidance does)"
        )
    if tuple(plan.u.shape[1:]) != (layout.num_layers, layout.num_heads):
        raise ValueError(
            f"plan covers {tuple(plan.u.shape[1:])} layers × heads but the transformer has "
            f"{(layout.num_layers, layout.num_heads)}"
        )
    if plan.scope == "image" and plan.text_len is None and any(layout.block_kind(layer) == "single"
                                                               for layer in plan.layers):
        raise ValueError(f"pag_scope='image' on the single-stream layers of {layout.model_type} needs the plan's "
                         "text_len")
    with installed_session(transformer, layout, plan.layers, lambda session: session.load(plan),
                           target=plan.target, scope=plan.scope, fork=True) as session:
        session.active = active
        yield session


def around_next_call(module: torch.nn.Module, context: Callable[[], ContextManager]) -> Callable[[], None]:
    """Run ``module``'s next call from this thread inside ``context()`` (entered when the call starts, exited when it
    returns, raises or is interrupted), then restore the module as it was; other threads' calls meanwhile pass
    through. Returns a function that disarms it if that call never comes (idempotent).

    The wrapper goes where the call enters compiled code, so a compiled module is entered with the context already
    open: an ``OptimizedModule``'s ``forward``, a module compiled in place's ``_compiled_call_impl``, else the
    module's ``forward``."""
    attribute = "_compiled_call_impl" if getattr(module, "_compiled_call_impl", None) is not None else "forward"
    missing = object()
    before = module.__dict__.get(attribute, missing)
    inner = getattr(module, attribute)

    def disarm() -> None:
        if module.__dict__.get(attribute, missing) is call:
            if before is missing:
                del module.__dict__[attribute]
            else:
                module.__dict__[attribute] = before

    owner = threading.get_ident()

    @functools.wraps(inner)
    def call(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return inner(*args, **kwargs)
        disarm()
        with context():
            return inner(*args, **kwargs)

    call.headhunter_next_call = True  # type: ignore[attr-defined]
    module.__dict__[attribute] = call
    return disarm


_STAND_INS = (SoftPAGProcessor, JointAttnDispatchProcessor)


def installed(transformer: torch.nn.Module) -> list[str]:
    """What of headhunter is installed on ``transformer`` right now, one line each: stand-in processors, fork hooks,
    a guider's armed call wrapper, diffusers module globals routed through headhunter, and the transformer's lock
    when another thread holds it. Empty outside every headhunter call — after a call that ended, raised or was
    interrupted included."""
    module = unwrap_compiled(transformer)
    found = []
    for owner in {id(module): module, id(transformer): transformer}.values():
        for attribute in ("forward", "_compiled_call_impl"):
            if getattr(owner.__dict__.get(attribute), "headhunter_next_call", False):
                found.append(f"{type(owner).__name__}.{attribute}: a guider's wrapper for its next call")
    for name, child in module.named_modules():
        for attribute in ("forward", "_compiled_call_impl"):
            if getattr(child.__dict__.get(attribute), "headhunter_prefix", False):
                found.append(f"{name}.{attribute}: prefix reuse")
        processor = getattr(child, "processor", None)
        if isinstance(processor, _STAND_INS):
            found.append(f"{name}.processor: {type(processor).__name__}")
        for hook in child._forward_pre_hooks.values():
            if isinstance(hook, _ForkHook) or isinstance(getattr(hook, "__self__", None), PerturbationSession):
                found.append(f"{name or type(module).__name__}: forward pre-hook {type(hook).__name__}")
    found += [f"{name}.dispatch_attention_fn: headhunter's wrapper" for name in patched_modules()]
    owner = lock_owner(module)
    if owner is not None and owner != threading.get_ident():
        found.append(f"the transformer's lock, held by thread {owner}")
    return found
