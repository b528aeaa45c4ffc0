"""File names as text that JSON, SQLite, a CSV and a terminal can all carry, and back.

A POSIX file name is any bytes but `/` and NUL. Python hands a name that is not UTF-8
over as a str holding lone surrogates (`os.fsdecode`), which orjson, SQLite and a strict
terminal refuse; a name may also hold a newline or an escape sequence. So wherever a path
is written (run.json, the ledger, outcome lines, problems.csv, logs, the terminal) it is
written as `to_text(path)`: the name as it reads, except that each byte of a character
that is not printable, or not UTF-8 at all, is written `\\xHH` and a backslash is
doubled. `from_text` turns that back into the exact name, so `bad\\xff.jsonl` in
run.json reopens the file whose name holds the byte 0xFF.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def to_text(path: str) -> str:
    """`path` (as `os.fsdecode` gives it) as printable text that `from_text` reverses."""
    if path.isprintable() and "\\" not in path:
        return path
    return "".join(
        "\\\\"
        if char == "\\"
        else char
        if char.isprintable()
        else "".join(f"\\x{byte:02x}" for byte in os.fsencode(char))
        for char in path
    )


def from_text(text: str) -> str:
    """The path that `to_text` wrote as `text`."""
    if "\\" not in text:
        return text
    raw = _ESCAPE.sub(
        lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]), os.fsencode(text)
    )
    return os.fsdecode(raw)
