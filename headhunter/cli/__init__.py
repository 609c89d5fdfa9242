"""The ``headhunter`` command line: ``generate``, ``search``, ``eval``, ``score``, ``ui``, ``bench`` and ``demo``.

One module per command; each registers its sub-parser. Errors a user can cause print one line on stderr and exit
with status 2. Nothing heavy is imported until a command runs, so ``headhunter --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

from . import bench, demo, evaluate, export, generate, score, search, ui
from .common import UsageError
from .quiet import quiet_known_notices

__all__ = ["UsageError", "build_parser", "load_pipeline", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error every headhunter command promises (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="headhunter", description="Head-level perturbation guidance (SoftPAG) and head search "
                     "(HeadHunter) for diffusers. Run a command with --help for its options.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in (generate, search, evaluate, export, ui, bench, score, demo):
        command.register(sub)
    return parser


def load_pipeline(*args: Any, **kwargs: Any) -> Any:
    """:func:`headhunter.pipelines.load_pipeline` (kept here for code written against earlier versions)."""
    from headhunter.pipelines import load_pipeline as load

    return load(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_notices()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (UsageError, ValueError) as err:
        message = " ".join(str(err).split("\n"))
        print(f"headhunter: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that is not writable, a disk that is full: the user's to fix, in one line
        where = f": {err.filename}" if err.filename else ""
        print(f"headhunter: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("headhunter: interrupted (a search or eval resumes when run again with the same settings)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
