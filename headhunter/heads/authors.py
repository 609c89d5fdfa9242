"""The HeadHunter reference implementation's selected-heads files, read as a :class:`HeadSet`.

The authors' search script (``pipeline_distributed.py``) saves its selection twice, in selection order: a text file
``final_perturb_heads.txt`` with one ``layer,head`` line per head, and ``final_perturb_heads.pkl``, a pickle of the
same ``[(layer, head), ...]`` list. Its layers are ``transformer_blocks`` indices and its heads the attention's head
indices, both counted from 0; for FLUX.1 it enumerates ``--num_layers 57`` layers, double-stream blocks first. That is
headhunter's own ``L{layer}H{head}`` numbering, so ``(13, 17)`` there is ``L13H17`` here, with no offset.

A pickle can run code when it is loaded, so it is never handed to :func:`pickle.load`. Its opcodes are read first
(:mod:`pickletools` parses without executing) and only those that build lists, tuples and integers are admitted; a
file with anything else (a class, a function call, a persistent id) is refused, naming what it holds. What passes is
then loaded by an unpickler that can resolve no global at all.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

from .headset import HeadSet

__all__ = ["AUTHORS_SUFFIXES", "read_authors_heads", "restricted_unpickle"]

AUTHORS_SUFFIXES = (".pkl", ".pickle")
_MAX_BYTES = 1 << 20  # a head list is a few kB; anything larger is not one
# Opcodes that build only lists, tuples and (long) integers, and the framing and memo around them.
_ADMITTED = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
})
_CALLERS = frozenset({"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "PERSID",
                      "BINPERSID", "EXT1", "EXT2", "EXT4"})
_LINE = re.compile(r"^\s*\(?\s*(\d+)\s*,\s*(\d+)\s*\)?\s*$")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused: the pickle holds a persistent id")


def restricted_unpickle(data: bytes, where: str = "pickle") -> Any:
    """Load ``data`` only if it is made of lists, tuples and integers; ValueError naming the first other opcode
    otherwise. Nothing in a refused pickle is executed: the check reads opcodes, it does not load."""
    if len(data) > _MAX_BYTES:
        raise ValueError(f"{where}: {len(data)} bytes is too large for a head list; refusing to read it")
    try:
        ops = list(pickletools.genops(data))
    except ValueError as err:
        raise ValueError(f"{where}: not a readable pickle ({err})") from None
    refused = [(op.name, arg, pos) for op, arg, pos in ops if op.name not in _ADMITTED]
    if refused:
        calls = [i for i, (op, _, _) in enumerate(ops) if op.name in _CALLERS]
        if calls:  # name the callable: GLOBAL carries "module name"; STACK_GLOBAL takes the two strings before it
            i = calls[0]
            op, arg, pos = ops[i]
            if op.name == "GLOBAL":
                what = f"a reference to {str(arg).replace(' ', '.')}"
            elif op.name == "STACK_GLOBAL":
                strings = [a for o, a, _ in ops[:i] if isinstance(a, str) and "UNICODE" in o.name][-2:]
                what = f"a reference to {'.'.join(strings)}" if len(strings) == 2 else "a reference to a callable"
            else:
                what = op.name
            reason = f"it holds {what} (byte {pos}), which would run on load"
        else:
            reason = f"it holds {refused[0][0]} (byte {refused[0][2]}), which is not a list, tuple or integer"
        raise ValueError(f"{where}: refusing this pickle: {reason}; only lists, tuples and integers (a "
                         "[(layer, head), ...] list) are read, and nothing in it was executed")
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError) as err:
        raise ValueError(f"{where}: not a readable pickle ({err})") from None


def _heads_from_pairs(items: Any, where: str) -> HeadSet:
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{where}: expected a list of (layer, head) pairs, found {type(items).__name__}")
    pairs = []
    for i, item in enumerate(items):
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)):
            raise ValueError(f"{where}: entry {i + 1} is {item!r}, not a (layer, head) pair of non-negative integers")
        pairs.append((int(item[0]), int(item[1])))
    if not pairs:
        raise ValueError(f"{where}: the file names no heads")
    return HeadSet(pairs)


def read_authors_heads(path: str | Path) -> HeadSet:
    """Heads from the reference implementation's ``final_perturb_heads.txt`` (``layer,head`` per line) or
    ``final_perturb_heads.pkl`` (read by :func:`restricted_unpickle`), in selection order, numbered as headhunter
    numbers them (both count layers and heads from 0)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ValueError(f"head file {where!r} does not exist")
    if path.suffix.lower() in AUTHORS_SUFFIXES:
        return _heads_from_pairs(restricted_unpickle(path.read_bytes(), where), where)
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{where}, line {number}: {line.strip()!r} is not 'layer,head' (the HeadHunter reference "
                             "implementation's final_perturb_heads.txt has one such line per head)")
        pairs.append((int(match[1]), int(match[2])))
    return _heads_from_pairs(pairs, where)
