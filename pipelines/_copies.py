"""Do the pipelines still follow their diffusers parents? (In the spirit of diffusers' ``make fix-copies``.)

``HeadHunterSD3Pipeline.__call__``, ``HeadHunterFluxPipeline.__call__`` and ``HeadHunterChromaPipeline.__call__`` are
the parents' ``__call__`` with HeadHunter's additions between ``# HeadHunter >>>`` and ``# HeadHunter <<<``; a parent
line an addition replaces is kept inside it as a ``#| `` comment. Removing the additions and restoring the ``#|``
lines must give back the parent's source line for line (docstrings, decorators, blank lines and indentation aside: the
FLUX and Chroma stock steps sit one level deeper under an ``else:``). ``python -m headhunter.pipelines._copies`` prints the differences; the test suite fails
on any.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
import textwrap
from typing import Callable

__all__ = ["check_copy", "copies", "restore_parent"]

OPEN, CLOSE, ORIGINAL = "# HeadHunter >>>", "# HeadHunter <<<", "#| "


def _function_lines(source: str) -> list[str]:
    """The lines of a function's source from its ``def`` on, without decorators and docstring."""
    lines = source.splitlines()
    # kept parent lines sit at column 0, as comments; blank them for parsing (line numbers stay) so dedent works
    tree = ast.parse(textwrap.dedent("\n".join("" if line.startswith(ORIGINAL) else line for line in lines)))
    function = tree.body[0]
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        docstring = body[0]
        lines = lines[: docstring.lineno - 1] + lines[docstring.end_lineno :]
    return lines[function.lineno - 1 :]


def restore_parent(lines: list[str]) -> list[str]:
    """``lines`` with every HeadHunter block replaced by the parent lines it keeps as ``#|`` comments."""
    out, inside = [], False
    for line in lines:
        stripped = line.strip()
        if stripped == OPEN:
            if inside:
                raise ValueError("a HeadHunter block opens inside another")
            inside = True
        elif stripped == CLOSE:
            if not inside:
                raise ValueError("a HeadHunter block closes without opening")
            inside = False
        elif inside:
            if line.startswith(ORIGINAL):
                out.append(line[len(ORIGINAL) :])
        else:
            out.append(line)
    if inside:
        raise ValueError("a HeadHunter block is not closed")
    return out


def _normalise(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip()]


def check_copy(ours: str, parent: str, name: str = "__call__") -> str:
    """A unified diff between the parent's source and ours with the HeadHunter blocks undone; "" when they agree."""
    expected = _normalise(_function_lines(parent))
    restored = _normalise(restore_parent(_function_lines(ours)))
    return "\n".join(difflib.unified_diff(expected, restored, f"diffusers {name}", f"headhunter {name}, restored",
                                          lineterm=""))


def copies() -> dict[str, tuple[Callable, Callable]]:
    """``{name: (our function, the diffusers function it follows)}``."""
    from diffusers import ChromaPipeline, FluxPipeline, StableDiffusion3Pipeline

    from .chroma import HeadHunterChromaPipeline
    from .flux import HeadHunterFluxPipeline
    from .sd3 import HeadHunterSD3Pipeline

    return {
        "HeadHunterSD3Pipeline.__call__": (HeadHunterSD3Pipeline.__call__, StableDiffusion3Pipeline.__call__),
        "HeadHunterFluxPipeline.__call__": (HeadHunterFluxPipeline.__call__, FluxPipeline.__call__),
        "HeadHunterChromaPipeline.__call__": (HeadHunterChromaPipeline.__call__, ChromaPipeline.__call__),
    }



def main() -> int:
    failed = 0
    for name, (ours, parent) in copies().items():
        diff = check_copy(inspect.getsource(inspect.unwrap(ours)), inspect.getsource(inspect.unwrap(parent)), name)
        if diff:
            failed += 1
            print(f"{name} no longer follows diffusers' parent:\n{diff}\n")
    if not failed:
        print("the pipelines follow their diffusers parents")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
