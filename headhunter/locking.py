"""One perturbation at a time per transformer.

SoftPAG works by swapping attention processors on the transformer, which every pipeline sharing that transformer
sees. A pipeline call and :func:`~headhunter.attention.perturbed_heads` therefore hold the transformer's lock while
they run: a second call from another thread *waits* for the first to finish, so perturbations never mix; waiting
calls are served in arrival order. The lock is re-entrant, so code running inside a call (a step-end callback, the pipeline's own ``perturbed_heads``) may take it
again on the same thread.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

from .heads import unwrap_compiled

__all__ = ["FairRLock", "holding_transformer", "lock_owner", "one_call_per_transformer"]

class FairRLock:
    """A re-entrant lock granted in arrival order. A search holds the transformer for one batch at a time and asks
    again at once; with a plain lock it could win every time, and a user's single image would wait for the whole
    search. Here the image goes next."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: collections.deque[object] = collections.deque()

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = object()
            self._queue.append(ticket)
            while self._owner is not None or self._queue[0] is not ticket:
                self._condition.wait()
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a lock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    @property
    def owner(self) -> int | None:
        """The thread ident holding the lock, or None."""
        return self._owner

    def __enter__(self) -> "FairRLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_locks: "weakref.WeakKeyDictionary[torch.nn.Module, FairRLock]" = weakref.WeakKeyDictionary()
_registry_guard = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])


def _lock_for(transformer: torch.nn.Module) -> FairRLock:
    module = unwrap_compiled(transformer)  # a compiled wrapper shares its model's lock
    with _registry_guard:
        lock = _locks.get(module)
        if lock is None:
            lock = _locks[module] = FairRLock()
        return lock


def lock_owner(transformer: torch.nn.Module) -> int | None:
    """The ident of the thread holding ``transformer``'s lock, or None when nobody does."""
    with _registry_guard:
        lock = _locks.get(unwrap_compiled(transformer))
    return None if lock is None else lock.owner


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
