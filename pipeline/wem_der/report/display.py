"""Text from the input or from the register, made safe to show a person.

A field value, a file name or an answer of the register can hold a newline, an escape
sequence or an invisible character. Written raw to a terminal, an escape sequence can
clear or rewrite the screen, and a newline can make one refused value pass for a valid one
followed by another line. Every such value is therefore shown through `shown`, on a
terminal (validate, the closing table, the report, console logs) and in problems.csv.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def shown(text: str) -> str:
    """`text` as it is when every character is printable and it has no space at either end;
    otherwise as `repr` shows it, quoted, with each control, format or separator character
    escaped (`'8001000000\\n'`, `'\\x1b[2J'`).

    Printable is Python's sense (`str.isprintable`), which leaves out what no terminal
    should be handed raw: C0 and C1 controls, DEL, bidirectional overrides, zero-width
    characters, line separators and the surrogates of undecodable file names.
    """
    if text.isprintable() and not text.startswith(" ") and not text.endswith(" "):
        return text
    return repr(text)


class _Escaped:
    """A log value already escaped by `shown`: the console renderer prints what `repr` gives,
    so it is printed as it is rather than quoted a second time."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text

    __str__ = __repr__


def escape_log_values(
    logger: object, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor for the console renderer, which prints strings raw unless they
    hold a space or a quote: every string value that `shown` would escape is escaped."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            text = shown(value)
            if text != value:
                event_dict[key] = _Escaped(text)
    return event_dict
