"""Reading the text files users hand us (prompt lists, settings) with errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_text"]


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; ValueError naming ``what``, the file and the offending line otherwise."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text: line {line}, column {column} holds byte "
                         f"0x{data[err.start]:02x}; save it as UTF-8") from None
