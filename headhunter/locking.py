"""One perturbation at a time per transformer.

SoftPAG works by swapping attention processors on the transformer, which every pipeline sharing that transformer
sees. A pipeline call and :func:`~headhunter.attention.perturbed_heads` therefore hold the transformer's lock while
they run: a second call from another thread *waits* for the first to finish, so perturbations never mix. The lock is
re-entrant, so code running inside a call (a step-end callback, the pipeline's own ``perturbed_heads``) may take it
again on the same thread.
"""

from __future__ import annotations

import functools
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

from .heads import unwrap_compiled

__all__ = ["holding_transformer", "one_call_per_transformer"]

_locks: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_registry_guard = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])


def _lock_for(transformer: torch.nn.Module) -> threading.RLock:
    module = unwrap_compiled(transformer)  # a compiled wrapper shares its model's lock
    with _registry_guard:
        lock = _locks.get(module)
        if lock is None:
            lock = _locks[module] = threading.RLock()
        return lock


@contextmanager
def holding_transformer(transformer: torch.nn.Module) -> Iterator[None]:
    """Hold ``transformer``'s lock for the body; other threads asking for it wait."""
    lock = _lock_for(transformer)
    with lock:
        yield


def one_call_per_transformer(call: F) -> F:
    """Decorate a pipeline's ``__call__`` so that concurrent calls on the same transformer run one after the other."""

    @functools.wraps(call)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with holding_transformer(self.transformer):
            return call(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
