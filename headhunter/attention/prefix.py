"""Prefix reuse between separate passes: the perturbed pass starts where the conditional pass left off.

A guider runs the perturbed pass as a forward of its own, with the conditional pass's inputs. Every block before the
first perturbed layer ``f`` computes exactly what it computed in the conditional pass, so its work is thrown away. With
prefix reuse the conditional pass *records* the output of the last block before ``f`` in each block list (FLUX.2 has
two, the double- and the single-stream blocks), and in the perturbed pass every block before ``f`` *replays* the
recorded output of its list instead of running. The code between blocks (FLUX.2's [text; image] concatenation, the
ControlNet residuals of Qwen-Image and Z-Image) runs as usual on what the blocks return, so the perturbed pass sees
bit for bit the activations the conditional pass had at ``f``. (The pipelines get the same saving differently: their
perturbed rows join the batch at ``f``; see :mod:`.install`.)

It holds where a block's output depends on nothing but the pass's inputs, which is true of every transformer in
:data:`headhunter.heads.MODELS` (their blocks keep no state between calls), and it needs the two passes to have the
same inputs — a guider's conditional and perturbed passes of one step do.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..heads import HeadLayout

__all__ = ["PrefixReuse", "prefix_installed"]


class PrefixReuse:
    """What the blocks before the fork do in this thread's pass: ``mode`` None (run), ``"record"`` (run, and keep
    the last block's output of each block list) or ``"replay"`` (return what was kept, without running)."""

    def __init__(self) -> None:
        self._thread = threading.local()
        # one forward per block, made once: torch.compile guards on the objects a compiled graph calls, so new ones
        # each call would make new graphs each call
        self.forwards: dict[tuple[int, str], _PrefixForward] = {}

    @property
    def mode(self) -> str | None:
        return getattr(self._thread, "mode", None)

    @mode.setter
    def mode(self, value: str | None) -> None:
        if value not in (None, "record", "replay"):
            raise ValueError(f"prefix mode is None, 'record' or 'replay', got {value!r}")
        self._thread.mode = value

    @property
    def outputs(self) -> dict[str, Any]:
        """Block list name -> the recorded output of its last block before the fork (this thread's)."""
        if not hasattr(self._thread, "outputs"):
            self._thread.outputs = {}
        return self._thread.outputs

    @contextmanager
    def pass_(self, mode: str | None) -> Iterator[None]:
        """One pass in ``mode``; what a record pass keeps lives until the replay that uses it (or the next record),
        a replay frees it, and a pass that raises leaves nothing to replay."""
        if mode == "record":
            self.outputs.clear()
        elif mode == "replay" and not self.outputs:
            raise RuntimeError("a prefix replay needs the conditional pass of the same step to have recorded the "
                               "prefix first")
        self.mode = mode
        ok = False
        try:
            yield
            ok = True
        finally:
            self.mode = None
            if mode == "replay" or not ok:
                self.outputs.clear()


class _PrefixForward:
    """The forward of one block before the fork while prefix reuse is installed (made once per block).

    Args:
        reuse: the transformer's :class:`PrefixReuse`.
        group: the block list the block belongs to.
        records: whether this is the last block of its list before the fork.
        forward: the block's own callable.
    """

    headhunter_prefix = True

    def __init__(self, reuse: PrefixReuse, group: str, records: bool, forward: Callable[..., Any]):
        self.reuse, self.group, self.records, self.forward = reuse, group, records, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mode = self.reuse.mode
        if mode == "replay":
            return self.reuse.outputs[self.group]
        out = self.forward(*args, **kwargs)
        if mode == "record" and self.records:
            self.reuse.outputs[self.group] = out
        return out


@contextmanager
def prefix_installed(module: torch.nn.Module, layout: HeadLayout, reuse: PrefixReuse,
                     fork_layer: int) -> Iterator[None]:
    """Put a :class:`_PrefixForward` on every block before ``fork_layer`` for the body (blocks compiled on their own
    get it in place of their compiled call, so a replayed block runs nothing); the blocks are as they were on exit,
    also when the body raises or is interrupted."""
    missing = object()
    restore: list[tuple[torch.nn.Module, str, Any]] = []
    try:
        for layer in range(fork_layer):
            block = layout.block(module, layer)
            group = layout.stack(layer)
            records = layer + 1 == fork_layer or layout.stack(layer + 1) != group
            attribute = "_compiled_call_impl" if getattr(block, "_compiled_call_impl", None) is not None else "forward"
            restore.append((block, attribute, block.__dict__.get(attribute, missing)))
            inner = getattr(block, attribute)
            forward = reuse.forwards.get((layer, attribute))
            if forward is None or forward.forward != inner:
                forward = reuse.forwards[(layer, attribute)] = _PrefixForward(reuse, group, records, inner)
            forward.records = records
            block.__dict__[attribute] = forward
        yield
    finally:
        for block, attribute, before in reversed(restore):
            if before is missing:
                block.__dict__.pop(attribute, None)
            else:
                block.__dict__[attribute] = before
        reuse.outputs.clear()
