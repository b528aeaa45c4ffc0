"""Split a JSON array into the bytes of its top-level elements, incrementally; or, the same
way, a run of JSON objects one after another (pretty-printed ones, say).

A file of one large JSON array must not be loaded whole, and no streaming JSON parser is a
dependency, so this scanner finds the element boundaries itself: it tracks only string and
escape state and bracket depth, and leaves the decoding of each element to orjson. It never
looks inside an element beyond that, so a broken element is orjson's to describe.

Regular expressions carry the scan: one match skips a whole run of bytes that cannot change
the depth (whole strings and whole nested groups included), so the Python loop turns about
once per element rather than once per byte. No repetition in them can backtrack (Python
3.11+), so no input makes them slow: one of a single byte class is possessive (`++`), one
of a larger pattern is greedy inside an atomic group, `(?>(?:...)*)`. The two mean the
same, but a possessive quantifier on a larger pattern could keep part of an iteration that
failed before Python 3.11.5 (CPython gh-106052), which split arrays wrongly on 3.11.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_QUOTE, _COMMA, _OPEN, _CLOSE, _BRACE = ord('"'), ord(","), ord("["), ord("]"), ord("{")
_OPENERS = frozenset(b"[{")

_STRING = rb'"(?>(?:[^"\\]++|\\.)*)"'


def _run_pattern(plain: bytes, levels: int) -> re.Pattern[bytes]:
    """A run of bytes that leaves the depth as it was: `plain` bytes, whole strings, and whole
    bracket groups nested up to `levels` deep. A group that is not complete yet is not part of
    the run, so the run stops at its opening bracket.
    """
    group = rb'(?>(?:[^"\[\]{}]++|' + _STRING + rb")*)"
    for _ in range(levels - 1):
        group = rb'(?>(?:[^"\[\]{}]++|' + _STRING + rb"|[\[{]" + group + rb"[\]}])*)"
    return re.compile(
        rb"(?>(?:" + plain + rb"|" + _STRING + rb"|[\[{]" + group + rb"[\]}])*)", re.DOTALL
    )


# Eight levels hold a whole Installation record (data, acConnections, devices, details),
# so one match usually skips one element; deeper input only takes more turns of the loop.
_LEVELS = 8
# Inside an element (depth 2 and deeper) a comma is plain; at depth 1 it ends an element.
_INNER = _run_pattern(rb'[^"\[\]{}]++', _LEVELS)
_TOP = _run_pattern(rb'[^"\[\]{},]++', _LEVELS)
# The rest of a string whose opening quote was seen; stops before the closing quote, or
# before a backslash that is the last byte so far (its escaped byte comes with more input).
_STRING_REST = re.compile(rb'(?>(?:[^"\\]++|\\.)*)', re.DOTALL)
# JSON's whitespace is exactly these four (RFC 8259, section 2).
_NON_WS = re.compile(rb"[^ \t\r\n]")
_WS = b" \t\r\n"


def oversize_reason(limit: int) -> str:
    """The reason given for a record longer than `limit` bytes."""
    if limit >= 2**20:
        return f"record over {limit // 2**20} MB (more than {limit} bytes)"
    return f"record over {limit} bytes"


@dataclass(frozen=True, slots=True)
class Element:
    """The bytes of one top-level element; `line` and `column` (1-based) are where it starts."""

    data: bytes
    index: int
    line: int
    column: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rest:
    """What stands outside the array (after its "]", or instead of a "["), not split."""

    data: bytes
    line: int
    column: int
    offset: int


@dataclass(frozen=True, slots=True)
class SplitError:
    """A problem at `line` that no element's bytes can show; `index` if it is one element's."""

    message: str
    line: int
    index: int | None = None


class ArraySplitter:
    """Feed bytes in; get back each top-level element of the array as soon as it is complete.

    With `values`, there is no array: the bytes are objects one after another, separated
    by whitespace alone, and each is an element; as if inside an array, whose depth 1 is
    then between two objects. Anything else there (an array, say) is `rest`.

    Memory holds one element at most: bytes before the current element are dropped, and an
    element longer than `max_element_bytes` (counted from its first byte that is not
    whitespace, however the input is chunked) is reported and skipped rather than kept.
    `line`, `column` and `offset` say where the first byte fed sits in the file.
    """

    def __init__(
        self,
        *,
        max_element_bytes: int,
        line: int = 1,
        column: int = 1,
        offset: int = 0,
        values: bool = False,
    ) -> None:
        self._limit = max_element_bytes
        self._values = values
        self._buf = bytearray()
        self._base = offset  # file offset of _buf[0]
        self._pos = 0  # next byte of _buf to scan
        self._start = 0  # where the current element begins (after "[" or ",", or its opener)
        self._depth = 1 if values else 0
        self._opened = values
        self._in_string = False
        self._skipping = False  # the current element is over the limit and was reported
        self._index = 0
        # Set when bytes other than whitespace stand outside the array: the splitting is
        # over, and those bytes and the rest of the input are the caller's to read.
        self.rest: Rest | None = None
        # Line counting is lazy: _line is the line of _buf[_line_pos], and that line starts
        # at file offset _line_start; _locate moves them forward only.
        self._line = line
        self._line_pos = 0
        self._line_start = offset - (column - 1)

    def feed(self, chunk: bytes) -> list[Element | SplitError]:
        """Scan `chunk`; return the elements (and problems) it completes."""
        out: list[Element | SplitError] = []
        if self.rest is not None:
            return out
        self._buf += chunk
        self._scan(out)
        if self._in_element:
            # Whitespace since the last "," or the "[" is no part of the element: let it go,
            # so that a long run of it neither stays in memory nor counts towards the
            # element's size, which is counted from its first byte that is not whitespace
            # (as _finish does), whatever the chunking. Once the element has begun, _start
            # is on that byte and the search stops there.
            self._start = self._first_byte(self._start, len(self._buf))
        if self._in_element and not self._skipping and len(self._buf) - self._start > self._limit:
            out.append(self._oversize())
            self._skipping = True
        self._compact()
        return out

    def close(self) -> list[Element | SplitError]:
        """The input has ended: an array that is still open was truncated."""
        if self.rest is not None or not self._in_element:
            return []
        line, _ = self._locate(self._first_byte(self._start, len(self._buf)))
        if self._values:
            message = f"JSON value truncated: the value starting at line {line} is incomplete"
        else:
            message = (
                f"JSON array truncated: item {self._index} starting at line {line} is incomplete"
            )
        return [SplitError(message, line, self._index)]

    @property
    def _in_element(self) -> bool:
        return self._depth > (1 if self._values else 0)

    def _scan(self, out: list[Element | SplitError]) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and self.rest is None:
            if self._in_string:
                pos = _run(_STRING_REST, buf, pos)
                if pos == len(buf) or buf[pos] != _QUOTE:
                    break  # the string goes on in the next chunk
                self._in_string = False
                pos += 1
            elif self._depth == 0:
                pos = self._outside(pos)
            elif self._values and self._depth == 1:
                pos = self._between(pos)
            else:
                pos = _run(_TOP if self._depth == 1 else _INNER, buf, pos)
                if pos == len(buf):
                    break
                byte = buf[pos]
                if byte == _QUOTE:
                    self._in_string = True
                elif byte == _COMMA:
                    self._finish(pos, out, closing=False)
                    self._start = pos + 1
                elif byte in _OPENERS:
                    self._depth += 1
                elif byte == _CLOSE or self._depth > 1:
                    # Inside an element a mismatched closer ("]" for "{") counts all the same:
                    # the element fails to decode, and orjson says where.
                    self._depth -= 1
                    if self._depth == 0:
                        self._finish(pos, out, closing=True)
                    elif self._values and self._depth == 1:
                        self._finish(pos + 1, out, closing=True)  # the closer is the value's
                # A "}" at depth 1 closes nothing: it stays in the element, for orjson to refuse.
                pos += 1
        self._pos = pos

    def _outside(self, pos: int) -> int:
        """Before the opening "[" or after the closing "]": only whitespace belongs here."""
        match = _NON_WS.search(self._buf, pos)
        if match is None:
            return len(self._buf)
        at = match.start()
        if not self._opened and self._buf[at] == _OPEN:
            self._opened = True
            self._depth = 1
            self._start = at + 1
            return at + 1
        self._stand_outside(at)
        return len(self._buf)

    def _between(self, pos: int) -> int:
        """Between two values: only whitespace belongs here, and a "{" begins the next."""
        match = _NON_WS.search(self._buf, pos)
        if match is None:
            return len(self._buf)
        at = match.start()
        if self._buf[at] == _BRACE:
            self._depth = 2
            self._start = at
            return at + 1
        self._stand_outside(at)
        return len(self._buf)

    def _stand_outside(self, at: int) -> None:
        line, column = self._locate(at)
        self.rest = Rest(bytes(self._buf[at:]), line, column, self._base + at)

    def _finish(self, end: int, out: list[Element | SplitError], *, closing: bool) -> None:
        """The element from _start to `end` (a top-level "," or the final "]", or just past
        the closer of a value) is complete."""
        if self._skipping:
            self._skipping = False  # reported when it went over the limit
            self._index += 1
            return
        first = self._first_byte(self._start, end)
        if end - first > self._limit:
            # From `first`, as feed counts an element that spans chunks: leading whitespace
            # does not count, or the verdict would depend on where a read ended.
            out.append(self._oversize())
        elif first == end and closing and self._index == 0:
            return  # "[]": an empty array has no elements
        else:
            line, column = self._locate(first)
            if first == end:
                out.append(SplitError(f"empty array item at line {line}", line, self._index))
            else:
                data = bytes(self._buf[first:end]).rstrip(_WS)
                out.append(Element(data, self._index, line, column, self._base + first))
        self._index += 1

    def _oversize(self) -> SplitError:
        line, _ = self._locate(self._first_byte(self._start, len(self._buf)))
        return SplitError(oversize_reason(self._limit), line, self._index)

    def _first_byte(self, start: int, end: int) -> int:
        match = _NON_WS.search(self._buf, start, end)
        return end if match is None else match.start()

    def _locate(self, at: int) -> tuple[int, int]:
        """Line and column (1-based) of _buf[at]; `at` never moves backwards."""
        newlines = self._buf.count(b"\n", self._line_pos, at)
        if newlines:
            self._line += newlines
            self._line_start = self._base + self._buf.rfind(b"\n", self._line_pos, at) + 1
        self._line_pos = at
        return self._line, self._base + at - self._line_start + 1

    def _compact(self) -> None:
        """Drop the bytes no element needs any more, so memory stays at one element."""
        keep = self._start if self._in_element and not self._skipping else self._pos
        self._locate(keep)
        del self._buf[:keep]
        self._base += keep
        self._pos -= keep
        self._start -= keep
        self._line_pos = 0


def _run(pattern: re.Pattern[bytes], buf: bytearray, pos: int) -> int:
    """End of the run of `pattern` at `pos` (the patterns above match the empty run too)."""
    match = pattern.match(buf, pos)
    return pos if match is None else match.end()
