"""From the bytes of one input to its items: format detection, decoding, and what went wrong.

The format is found from the bytes, not the name: gzip by the magic bytes 1f 8b (then
decompressed), a JSON array when the first byte that is not whitespace is "[", JSON Lines
otherwise; and what follows an array's closing "]" is read the same way, as if it began a
file (`cat a.json b.json`). JSON Lines whose first line opens an object ("{" alone, as a
pretty-printer writes it) are values one after another, each read whole whatever lines it
takes. A record is a bare object or one wrapped as `{"data": {...}}`; the wrapper is
removed.

JSON is UTF-8 (a UTF-8 BOM, at the start or at the start of a line, is passed over). An
input in UTF-16 or UTF-32 is one item that says so, not one refusal per line.

Every problem becomes a `SourceItem` with an `error`, and decoding goes on with the next
line; bytes that end early (`StreamError`) end the input. Blank lines are not records and
are skipped. A value that is valid JSON but not an object (a number, an array) is passed
on as a value, as any other: record validation says what is wrong with it, so there is
one place that judges content.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Generator, Iterable, Iterator
from itertools import chain
from typing import Any

import orjson

from wem_der.read.jsonsplit import ArraySplitter, Element, Rest, SplitError, oversize_reason
from wem_der.records.outcomes import SourceItem, SourceRef

# The size of a read from an input, and the most that one step of gunzip may produce.
READ_SIZE = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
# The byte order marks of UTF-32 and UTF-16, by the names iconv knows them by; the longer
# first, since UTF-32LE's begins with UTF-16LE's.
_BYTE_ORDER_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
# Which of the first four bytes are NUL when the first two characters are ASCII, as those
# of JSON are: JSON text in UTF-8 holds no NUL at all.
_NUL_PATTERNS = (
    ((False, True, True, True), "UTF-32LE"),
    ((True, True, True, False), "UTF-32BE"),
    ((False, True, False, True), "UTF-16LE"),
    ((True, False, True, False), "UTF-16BE"),
)
_WS = b" \t\r\n"
_ERROR_TEXT_MAX = 200
# 2**63 has 19 digits: a shorter run of digits is an integer orjson holds exactly. Digits
# are all made "0" and the run looked for as a substring: a tenth of a regex's cost.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


class StreamError(Exception):
    """The bytes of one input ended early or could not be read; the next input is read."""


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress gzip chunk by chunk; no output is over READ_SIZE, so a gzip bomb stays small."""
    member = None
    try:
        for chunk in chunks:
            data = chunk
            while data:
                # wbits=31: a gzip header and trailer. `cat a.gz b.gz` is valid gzip of two
                # members, so a member that ends makes way for the next.
                member = member or zlib.decompressobj(wbits=31)
                while True:
                    out = member.decompress(data, READ_SIZE)
                    if out:
                        yield out
                    data = member.unconsumed_tail
                    # A full output may leave more behind even with no input left.
                    if member.eof or (not data and len(out) < READ_SIZE):
                        break
                if member.eof:
                    data, member = member.unused_data, None
    except zlib.error as exc:
        raise StreamError(f"gzip stream corrupt ({exc})") from exc
    if member is not None:
        raise StreamError("gzip stream truncated")


def items_from_chunks(label: str, raw: Iterator[bytes], limit: int) -> Iterator[SourceItem]:
    """The items of the input `label`, whose bytes as read are `raw`; none over `limit` bytes.

    A `StreamError` from `raw` or from gunzip ends the input with one item that says where.
    """
    lines = 0  # newlines passed to the parser, so that an early end can say where

    def counted() -> Iterator[bytes]:
        nonlocal lines
        for chunk in _decompressed(raw):
            lines += chunk.count(b"\n")
            yield chunk

    try:
        yield from _parse(label, _Chunks(counted()), limit)
    except StreamError as exc:
        yield SourceItem(SourceRef(label, line=lines + 1), error=f"{exc} after line {lines}")


def _decompressed(raw: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes of an input, gunzipped if they start with the gzip magic (whatever the name)."""
    first = next(raw, b"")
    # A pipe may give one byte at a time: one byte of the magic does not say yet.
    while first and GZIP_MAGIC.startswith(first) and first != GZIP_MAGIC:
        more = next(raw, b"")
        if not more:
            break
        first += more
    chunks = chain([first], raw)
    yield from gunzip(chunks) if first.startswith(GZIP_MAGIC) else chunks


class _Chunks:
    """The chunks of an input, with bytes that a parser did not use put back in front."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._back = b""

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self._back:
            back, self._back = self._back, b""
            return back
        return next(self._chunks)

    def put_back(self, data: bytes) -> None:
        self._back = data + self._back


def _parse(label: str, chunks: _Chunks, limit: int) -> Iterator[SourceItem]:
    """Check the encoding and pass a UTF-8 BOM; then read the input part by part, each in
    the format its first byte says (see `_part`)."""
    head = b""
    for chunk in chunks:
        head += chunk
        # Four bytes tell the encoding; a line of UTF-8 that ends sooner is read at once, so
        # that a short record does not wait for bytes a slow writer has not sent yet.
        if len(head) >= 4 or (b"\n" in head and b"\0" not in head):
            break
    encoding = _foreign_encoding(head)
    if encoding is not None:
        # Every line would be refused for the same reason: it is said once.
        yield SourceItem(SourceRef(label, line=1), error=encoding)
        return
    at: Rest | None = Rest(head, line=1, column=1, offset=0)
    if head.startswith(_BOM):
        # Windows editors write a UTF-8 BOM; it carries no meaning, so it is dropped.
        at = Rest(head[len(_BOM) :], line=1, column=1, offset=len(_BOM))
    while at is not None:
        chunks.put_back(at.data)
        at = yield from _part(label, chunks, limit, at)


def _foreign_encoding(head: bytes) -> str | None:
    """Why the input that starts with `head` cannot be read, if it is UTF-16 or UTF-32 text.

    JSON exchanged between systems is UTF-8. The other two show by a byte order mark, or
    without one by where the NUL bytes of the first, ASCII, characters fall.
    """
    for mark, name in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return _convert(name, f"it starts with the {name} byte order mark")
    zeros = tuple(byte == 0 for byte in head[:4])
    for pattern, name in _NUL_PATTERNS:
        if zeros == pattern:
            return _convert(name, f"its NUL bytes fall where {name} puts them")
    return None


def _convert(name: str, why: str) -> str:
    return (
        f"the input looks like {name} text ({why}), not UTF-8, which JSON must be: convert it"
        f" (`iconv -f {name} -t UTF-8 FILE > NEW`) and give it again; none of its records"
        " were read"
    )


def _part(
    label: str, chunks: _Chunks, limit: int, at: Rest
) -> Generator[SourceItem, None, Rest | None]:
    """The items of one part of the input, from `at`: pass whitespace; a "[" begins a JSON
    array, anything else JSON Lines. Where the part ends before the input does (bytes
    after an array, say), what follows and where it is."""
    line, column, offset = at.line, at.column, at.offset
    for chunk in chunks:
        content = chunk.lstrip(_WS)
        if content:
            chunks.put_back(chunk)
            where = Rest(b"", line, column, offset)
            if content.startswith(b"["):
                return (yield from _split(label, chunks, limit, where, values=False))
            return (yield from _jsonl_items(label, chunks, limit, where))
        newlines = chunk.count(b"\n")
        line += newlines
        column = len(chunk) - chunk.rfind(b"\n") if newlines else column + len(chunk)
        offset += len(chunk)
    return None


def _jsonl_items(
    label: str, chunks: _Chunks, limit: int, at: Rest
) -> Generator[SourceItem, None, Rest | None]:
    """One value per line, from `at`.

    A first line that ends by opening an object or an array ("{" alone, as a
    pretty-printer writes it) is no line of JSON Lines: the values are then read as they
    come, one after another, whatever lines they take (`_split` with `values`).
    """
    line, column, offset = at.line, at.column, at.offset
    pending: list[bytes] = []  # the start of a line that goes on in the next chunk
    start = offset  # file offset of the line being read
    dropping = False  # the line being read is over the limit, and was reported
    first = True  # no line with a record in it has been read yet
    for chunk in chunks:
        at_byte = 0
        while (newline := chunk.find(b"\n", at_byte)) >= 0:
            if not dropping:
                data = chunk[at_byte:newline]
                if pending:
                    data = b"".join([*pending, data])
                    pending.clear()
                if first and data.strip(_WS):
                    first = False
                    if data.rstrip(_WS).endswith((b"{", b"[")):
                        chunks.put_back(data + chunk[newline:])
                        where = Rest(b"", line, column, start)
                        return (yield from _split(label, chunks, limit, where, values=True))
                item = _line_item(label, data, limit, line=line, column=column, offset=start)
                if item is not None:
                    yield item
            dropping = False
            line, column = line + 1, 1
            at_byte = newline + 1
            start = offset + at_byte
        offset += len(chunk)
        if at_byte < len(chunk) and not dropping:
            tail = chunk[at_byte:]
            if not pending:
                # A record's size counts from its first byte that is not whitespace, as in
                # _line_item, whatever the chunking: so whitespace before it is never kept
                # (however long the run, memory holds none of it), and its place moves on.
                content = tail.lstrip(_WS)
                start += len(tail) - len(content)
                column += len(tail) - len(content)
                tail = content
            if tail:
                pending.append(tail)
                if sum(map(len, pending)) > limit:
                    pending.clear()
                    first = False
                    yield SourceItem(SourceRef(label, line=line), error=oversize_reason(limit))
                    dropping = True
    if pending:  # the last line has no newline
        item = _line_item(label, b"".join(pending), limit, line=line, column=column, offset=start)
        if item is not None:
            yield item
    return None


def _line_item(
    label: str, data: bytes, limit: int, *, line: int, column: int, offset: int
) -> SourceItem | None:
    record = data.lstrip(_WS)
    if record.startswith(_BOM):
        # `cat` of files that Windows editors wrote: a BOM begins each one's first line.
        skip = len(data) - len(record) + len(_BOM)
        data, column, offset = data[skip:], column + skip, offset + skip
        record = data.lstrip(_WS)
    if not record:
        return None  # a blank line is not a record
    ref = SourceRef(label, line=line)
    # From the first byte that is not whitespace, as _jsonl_items counts a line that spans
    # chunks: whether a record is over the limit must not depend on where a read ended.
    if len(record) > limit:
        return SourceItem(ref, error=oversize_reason(limit))
    return _decode(data, ref, line=line, column=column, offset=offset)


def _split(
    label: str, chunks: _Chunks, limit: int, at: Rest, *, values: bool
) -> Generator[SourceItem, None, Rest | None]:
    """The elements of one JSON array from `at`, or with `values` the values one after
    another; then what follows, if anything does (as in `cat a.json b.jsonl`)."""
    splitter = ArraySplitter(
        max_element_bytes=limit, line=at.line, column=at.column, offset=at.offset, values=values
    )
    for chunk in chunks:
        yield from _split_items(label, splitter.feed(chunk), indexed=not values)
        if (rest := splitter.rest) is not None:
            return rest
    yield from _split_items(label, splitter.close(), indexed=not values)
    return None


def _split_items(
    label: str, events: list[Element | SplitError], *, indexed: bool
) -> Iterator[SourceItem]:
    """Items at their line, and for the elements of an array (`indexed`) at their index."""
    for event in events:
        ref = SourceRef(label, line=event.line, index=event.index if indexed else None)
        if isinstance(event, Element):
            yield _decode(
                event.data, ref, line=event.line, column=event.column, offset=event.offset
            )
        else:
            yield SourceItem(ref, error=event.message)


def _decode(data: bytes, ref: SourceRef, *, line: int, column: int, offset: int) -> SourceItem:
    """One value, decoded when first read; `line`, `column` and `offset` are where `data`
    starts in the file."""
    return SourceItem.deferred(
        ref, functools.partial(_decoded, data, line=line, column=column, offset=offset)
    )


def _decoded(data: bytes, *, line: int, column: int, offset: int) -> tuple[object, str | None]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return None, _reason(data, exc, line=line, column=column, offset=offset)
    try:
        rewritten = orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels but writes only 254: such a record could never be sent.
        return None, "nested more than 254 levels deep, which cannot be sent"
    ambiguity = _ambiguity(data, rewritten)
    # The Installation API's body is {"data": {...}}; the wrapper is not part of the record.
    if isinstance(value, dict) and len(value) == 1 and "data" in value:
        value = value["data"]
    return value, ambiguity


class _DuplicateKey(Exception):
    """An object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _LongInteger(Exception):
    """An integer outside the 64 bits orjson reads exactly."""


def _exact_integer(text: str) -> int:
    # By the digits, not by comparing values: 2**64 read as a float is still equal to 2**64.
    # The length check keeps int() away from the thousands of digits it refuses.
    if len(text.lstrip("-")) > 20:
        raise _LongInteger
    number = int(text)
    if not -(2**63) <= number < 2**64:
        raise _LongInteger
    return number


def _ambiguity(data: bytes, rewritten: bytes) -> str | None:
    """Why orjson's reading of `data` (`rewritten`: that value written by orjson) is not
    what `data` says, if it is not.

    orjson accepts two things silently that would send something other than what the file
    says: an object that names a key twice (it keeps the last value, so which one was meant
    is a guess, and for `nmi` it decides which installation is changed) and an integer
    beyond 64 bits (it becomes a float, and loses digits).

    Most records are settled by counting: without a backslash in `data`, no string holds
    a quote, so every string, key or value, is exactly two quote bytes both in `data` and
    in `rewritten`, and a key named twice leaves `rewritten` a string short; and an integer
    beyond 64 bits needs at least 19 digits in a row. Only a record that fails the count is
    read again by the standard library's parser, which tells both exactly, for a few times
    the cost.
    """
    if (
        b"\\" not in data
        and _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO)
        and data.count(b'"') == rewritten.count(b'"')
    ):
        return None
    try:
        json.loads(data, object_pairs_hook=_unique_keys, parse_int=_exact_integer)
    except _DuplicateKey as exc:
        return f"duplicate key {exc.args[0]!r} in one object; which value is meant is unclear"
    except _LongInteger:
        return "an integer beyond 64 bits, which cannot be sent exactly"
    return None


def _reason(
    data: bytes, exc: orjson.JSONDecodeError, *, line: int, column: int, offset: int
) -> str:
    """Say why `data` is not JSON, and where, in the file's terms rather than orjson's."""
    if (nul := data.find(b"\0")) >= 0:
        return (
            f"a NUL byte (0x00) at byte offset {offset + nul}, which JSON text never holds: is"
            " the file UTF-16 or UTF-32 (convert it to UTF-8), or not text at all?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        byte = data[bad.start]
        return f"not valid UTF-8: byte 0x{byte:02x} at byte offset {offset + bad.start}"
    # orjson counts from the start of `data`, which need not be the start of a line.
    if exc.lineno > 1:
        line, column = line + exc.lineno - 1, 1
    where = f"line {line}, column {column + exc.colno - 1}"
    if text.startswith(("NaN", "Infinity"), exc.pos):
        return f"NaN and Infinity are not valid JSON numbers ({where})"
    return f"broken JSON: {exc.msg[:_ERROR_TEXT_MAX]} ({where})"
