"""Reading records out of input files: formats, places, streaming, and bad input."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import random
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import pytest
from wem_der.errors import InputError
from wem_der.read.formats import READ_SIZE, StreamError, gunzip, items_from_chunks
from wem_der.read.jsonsplit import ArraySplitter, Element, SplitError
from wem_der.read.sources import MAX_ITEM_BYTES, check_paths, iter_items
from wem_der.records.outcomes import SourceItem, SourceRef

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BAD = Path(__file__).parent / "data" / "bad"


def record(n: int) -> dict[str, object]:
    # Strings with brackets, commas, quotes and escapes, so a splitter that miscounts shows.
    return {"nmi": f"80010{n:05d}", "comments": 'a, [b] {c} "q" \\', "acConnections": [{"n": n}]}


async def collect(
    paths: list[str],
    *,
    stdin: BinaryIO | None = None,
    chunk_lines: int = 512,
    max_item_bytes: int = MAX_ITEM_BYTES,
    read: Callable[[int, int], bytes] = os.read,
) -> list[SourceItem]:
    async with asyncio.timeout(10):
        items = iter_items(
            paths, stdin=stdin, chunk_lines=chunk_lines, max_item_bytes=max_item_bytes, read=read
        )
        return [item async for item in items]


def jsonl(values: list[dict[str, object]], *, wrap: bool = False) -> bytes:
    return b"".join(orjson.dumps({"data": v} if wrap else v) + b"\n" for v in values)


def array(values: list[dict[str, object]], *, wrap: bool = False) -> tuple[bytes, list[int]]:
    """A pretty-printed array, and the line on which each item starts."""
    out, lines, line = bytearray(b"[\n"), [], 2
    for i, value in enumerate(values):
        text = orjson.dumps({"data": value} if wrap else value, option=orjson.OPT_INDENT_2)
        lines.append(line)
        out += text + (b",\n" if i < len(values) - 1 else b"\n")
        line += text.count(b"\n") + 1
    return bytes(out + b"]\n"), lines


# Enough records that the input spans several READ_SIZE chunks.
RECORDS = [record(n) for n in range(2500)]


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "wrapped"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("form", ["jsonl", "array"])
async def test_formats_yield_every_record_with_its_place(
    tmp_path: Path, form: str, compress: bool, wrap: bool
) -> None:
    """JSON Lines and arrays, bare or wrapped, plain or gzip: every record, line and index."""
    if form == "jsonl":
        data, lines = jsonl(RECORDS, wrap=wrap), list(range(1, len(RECORDS) + 1))
    else:
        data, lines = array(RECORDS, wrap=wrap)
    assert len(data) > 2 * READ_SIZE
    # The name says nothing true: the content decides.
    path = tmp_path / ("input.json.gz" if not compress else "input.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)

    items = await collect([str(path)])

    assert [item.value for item in items] == RECORDS
    assert all(item.error is None for item in items)
    indexes = range(len(RECORDS)) if form == "array" else [None] * len(RECORDS)
    expected = [SourceRef(str(path), line=n, index=i) for n, i in zip(lines, indexes, strict=True)]
    assert [item.source for item in items] == expected


async def test_one_line_array_gives_indexes_on_line_one() -> None:
    """A compact array: every item is on line 1, told apart by its index."""
    items = await collect(["-"], stdin=io.BytesIO(b'[{"a": 1},{"data": {"b": 2}}, 3]'))
    assert [(i.source, i.value) for i in items] == [
        (SourceRef("-", line=1, index=0), {"a": 1}),
        (SourceRef("-", line=1, index=1), {"b": 2}),
        (SourceRef("-", line=1, index=2), 3),
    ]


async def test_data_is_unwrapped_only_when_it_is_the_only_key() -> None:
    """`{"data": ...}` is a wrapper; `data` beside other keys is content."""
    stdin = io.BytesIO(b'{"data": {"a": 1}}\n{"data": {"a": 1}, "b": 2}\n')
    items = await collect(["-"], stdin=stdin)
    assert [i.value for i in items] == [{"a": 1}, {"data": {"a": 1}, "b": 2}]


async def test_several_paths_and_stdin_are_read_in_order(tmp_path: Path) -> None:
    """Paths are read one after another, `-` (gzip here) where it stands among them."""
    first, last = tmp_path / "first.jsonl", tmp_path / "last.json"
    first.write_bytes(jsonl(RECORDS[:2]))
    last.write_bytes(array(RECORDS[4:6])[0])
    stdin = io.BytesIO(gzip.compress(jsonl(RECORDS[2:4])))

    items = await collect([str(first), "-", str(last)], stdin=stdin)

    assert [i.value for i in items] == RECORDS[:6]
    assert [str(i.source) for i in items] == [
        f"{first}:1",
        f"{first}:2",
        "-:1",
        "-:2",
        f"{last}[0]",
        f"{last}[1]",
    ]


async def test_concatenated_gzip_members_are_one_input() -> None:
    """`cat a.gz b.gz` is valid gzip: both members are read."""
    data = gzip.compress(jsonl(RECORDS[:1])) + gzip.compress(jsonl(RECORDS[1:2]))
    items = await collect(["-"], stdin=io.BytesIO(data))
    assert [(i.source.line, i.value) for i in items] == [(1, RECORDS[0]), (2, RECORDS[1])]


async def test_highly_compressed_input_is_read_whole() -> None:
    """A gzip that expands a thousandfold still yields every byte, in bounded pieces."""
    padding = b" " * (5 * READ_SIZE + 17)
    data = gzip.compress(b'{"a": 1}' + padding + b'\n{"b": 2}' + padding)
    items = await collect(["-"], stdin=io.BytesIO(data))
    assert [(i.source.line, i.value) for i in items] == [(1, {"a": 1}), (2, {"b": 2})]


def test_truncated_gzip_gives_all_it_can_in_bounded_pieces() -> None:
    """Cut anywhere, gzip yields every byte zlib can recover, never more than READ_SIZE at once."""
    whole = gzip.compress(b"ab" * (3 * READ_SIZE), mtime=0)
    for cut in range(1, len(whole)):
        data = whole[:cut]
        pieces: list[bytes] = []
        with pytest.raises(StreamError, match="gzip stream truncated"):
            pieces.extend(gunzip([data]))
        assert b"".join(pieces) == zlib.decompressobj(wbits=31).decompress(data), cut
        assert all(0 < len(piece) <= READ_SIZE for piece in pieces)


class _Lines(io.RawIOBase):
    """An endless-looking input made on demand, counting the bytes handed out."""

    def __init__(self, count: int) -> None:
        self._lines: Iterator[bytes] = (orjson.dumps(record(n)) + b"\n" for n in range(count))
        self._pending = b""
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer)
        while len(self._pending) < len(view):
            line = next(self._lines, None)
            if line is None:
                break
            self._pending += line
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.served += size
        return size


async def test_first_item_arrives_before_the_input_is_read() -> None:
    """Items stream: the first one comes after a chunk or two, not after the whole input."""
    source = _Lines(100_000)
    async with asyncio.timeout(10):
        items = iter_items(["-"], stdin=io.BufferedReader(source), chunk_lines=16)
        first = await anext(items)
        await items.aclose()
    assert first.value == record(0)
    assert 0 < source.served <= 2 * READ_SIZE


@pytest.mark.parametrize("form", ["jsonl", "array"])
async def test_memory_stays_flat_on_a_large_input(tmp_path: Path, form: str) -> None:
    """25k records: the peak of traced memory stays well under the size of the input."""
    values = [{"nmi": f"80010{n:05d}", "n": n, "comments": "x" * 200} for n in range(25_000)]
    path = tmp_path / "large"
    path.write_bytes(jsonl(values) if form == "jsonl" else orjson.dumps(values))
    size = path.stat().st_size
    count = 0
    tracemalloc.start()
    try:
        async with asyncio.timeout(10):
            async for item in iter_items([str(path)]):
                count += item.error is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(values)
    # Holding the input whole would take more than twice this bound.
    assert size > 5_000_000
    assert peak < 2_500_000


@pytest.mark.parametrize("form", ["jsonl", "array"])
async def test_oversized_record_is_not_held_in_memory(form: str) -> None:
    """A 20 MB record over a 1 MB limit: memory stays near the limit, not the record."""
    big = b'{"comments": "' + b"x" * (20 * 2**20) + b'"}'
    data = big + b"\n{}\n" if form == "jsonl" else b"[" + big + b", {}]"
    stdin = io.BytesIO(data)
    tracemalloc.start()
    try:
        items = await collect(["-"], stdin=stdin, max_item_bytes=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(i.error, i.value) for i in items] == [
        ("record over 1 MB (more than 1048576 bytes)", None),
        (None, {}),
    ]
    assert peak < 4 * 2**20


async def test_file_shrinking_while_read_is_reported_as_truncation(tmp_path: Path) -> None:
    """A file cut short under the reader: the lines read come through, then one error."""
    path = tmp_path / "shrinks.jsonl"
    path.write_bytes(jsonl(RECORDS))
    async with asyncio.timeout(10):
        items = iter_items([str(path)], chunk_lines=1)
        first = await anext(items)
        os.truncate(path, READ_SIZE + 10)
        rest = [item async for item in items]
    lines_in_first_chunk = jsonl(RECORDS)[:READ_SIZE].count(b"\n")
    assert first.value == RECORDS[0]
    assert [i.value for i in rest[:-1]] == RECORDS[1:lines_in_first_chunk]
    error = rest[-1].error or ""
    assert error.startswith("file shrank while being read")
    assert error.endswith(f"after line {lines_in_first_chunk}")
    assert rest[-1].source.line == lines_in_first_chunk + 1


@pytest.mark.parametrize("form", ["jsonl", "array"])
async def test_oversized_record_is_an_error_and_reading_goes_on(form: str) -> None:
    """A record over the limit (spanning several chunks) is reported, not kept; the next is read."""
    big: dict[str, object] = {"nmi": "8001000001", "comments": "x" * (3 * READ_SIZE)}
    small: dict[str, object] = {"nmi": "8001000002"}
    data = jsonl([big, small]) if form == "jsonl" else orjson.dumps([big, small])
    items = await collect(["-"], stdin=io.BytesIO(data), max_item_bytes=READ_SIZE)
    assert items[0].error == f"record over {READ_SIZE} bytes"
    assert items[0].source.line == 1
    assert [(i.error, i.value) for i in items[1:]] == [(None, small)]


async def test_limit_in_megabytes_is_named_so() -> None:
    """The default limit's reason says "record over 10 MB"."""
    big = b'{"comments": "' + b"x" * (11 * 2**20) + b'"}\n{"a": 1}\n'
    items = await collect(["-"], stdin=io.BytesIO(big))
    assert (items[0].error or "").startswith("record over 10 MB")
    assert items[1].value == {"a": 1}


# Records of exactly the limit and one byte over it, each after whitespace longer than the
# limit, so that any of that whitespace counted, in any chunking, would refuse the first.
_LIMIT = 100
_AT_LIMIT = b'{"nmi": "8001000001", "comments": "' + b"x" * (_LIMIT - 37) + b'"}'
_OVER_LIMIT = b'{"nmi": "8001000002", "comments": "' + b"x" * (_LIMIT - 36) + b'"}'
_LEADING = b" \t" * 115
_BROKEN = b'{"a": 1,}'


@pytest.mark.parametrize("form", ["jsonl", "array"])
@pytest.mark.parametrize("size", [1, 7, 60, 64, 101, 4096])
def test_size_limit_and_places_do_not_depend_on_the_chunking(form: str, size: int) -> None:
    """A record's size counts from its first byte that is not whitespace, in every chunking.

    Leading whitespace once counted only when it shared a read with its record, so a record
    passed or failed by where the reads happened to end.
    """
    assert (len(_AT_LIMIT), len(_OVER_LIMIT)) == (_LIMIT, _LIMIT + 1)
    records = [_LEADING + r for r in (_AT_LIMIT, _OVER_LIMIT, _BROKEN, _AT_LIMIT)]
    if form == "jsonl":
        data, lines = b"\n".join(records) + b"\n", [1, 2, 3, 4]
    else:
        data, lines = b"[" + b",".join(records) + b"]", [1, 1, 1, 1]
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    items = list(items_from_chunks("in", iter(chunks), _LIMIT))
    index = [None] * 4 if form == "jsonl" else [0, 1, 2, 3]
    assert [(i.source.line, i.source.index) for i in items] == list(zip(lines, index, strict=True))
    assert [i.error for i in items[:2]] == [None, f"record over {_LIMIT} bytes"]
    assert [items[0].value, items[3].value] == [orjson.loads(_AT_LIMIT)] * 2
    # The broken record's place is in the file's terms, past the whitespace skipped: orjson
    # stops at its trailing comma, the 8th byte of the record.
    at = data.index(_BROKEN)
    column = at - (data.rfind(b"\n", 0, at) + 1) + 8
    assert (items[2].error or "").endswith(f"(line {lines[2]}, column {column})")


# The devices of an AC connection, in the corpus records that have one.
DEV: dict[str, object] = {"devices": [{"type": "Solar PV"}]}

# The bad-input corpus: for each file, what comes out, in order: a value, or a fragment of
# the error. Every file but the empty ones has a good record after its problem.
CORPUS: dict[str, list[tuple[str, object]]] = {
    "broken-json.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: unexpected end of data (line 2, column 22)"),
        (":3", {"nmi": "8001000003"}),
    ],
    "non-utf8.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "not valid UTF-8: byte 0xff at byte offset 36"),
        (":3", {"nmi": "8001000003"}),
    ],
    "bom.jsonl": [(":1", {"nmi": "8001000001"}), (":2", {"nmi": "8001000002"})],
    "blank-lines.jsonl": [
        (":2", {"nmi": "8001000001"}),
        (":6", {"nmi": "8001000002"}),
        (":8", {"nmi": "8001000003"}),
    ],
    "nan.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "NaN and Infinity are not valid JSON numbers (line 2, column 40)"),
        (":3", "NaN and Infinity are not valid JSON numbers (line 3, column 41)"),
        (":4", {"nmi": "8001000004"}),
    ],
    "deep-nesting.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: depth limit exceeded"),
        (":3", {"nmi": "8001000003"}),
        (":4", "nested more than 254 levels deep, which cannot be sent"),
        (":5", {"nmi": "8001000005"}),
    ],
    "empty.jsonl": [],
    "whitespace-only.jsonl": [],
    # A JSON Lines file whose first line is an array: the array's items, then line by line.
    "not-an-object.jsonl": [
        ("[0]", 1),
        ("[1]", 2),
        (":2", 42),
        (":3", "text"),
        (":4", None),
        (":5", [3]),
        (":6", {"nmi": "8001000006"}),
    ],
    "array-truncated.json": [
        ("[0]", {"nmi": "8001000001"}),
        ("[1]", {"nmi": "8001000002"}),
        ("[2]", "JSON array truncated: item 2 starting at line 4 is incomplete"),
    ],
    "array-trailing-junk.json": [
        ("[0]", {"nmi": "8001000001"}),
        ("[1]", {"nmi": "8001000002"}),
        (":5", {"nmi": "8001000003"}),
        (":6", "broken JSON: invalid literal, expected 'true' (line 6, column 1)"),
        (":7", {"nmi": "8001000004"}),
    ],
    "array-broken-item.json": [
        ("[0]", {"nmi": "8001000001"}),
        ("[1]", "broken JSON: unexpected character, expected ',' or '}' (line 3, column 24)"),
        ("[2]", {"nmi": "8001000003"}),
    ],
    "array-stray-comma.json": [
        ("[0]", {"nmi": "8001000001"}),
        ("[1]", "empty array item at line 1"),
        ("[2]", {"nmi": "8001000003"}),
    ],
    "truncated.jsonl.gz": [
        *((f":{n}", {"nmi": f"800100000{n}"}) for n in range(1, 7)),
        (":7", "gzip stream truncated after line 6"),
    ],
    "gzip-trailing-garbage.jsonl.gz": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002"}),
        (":3", "gzip stream corrupt (Error -3 while decompressing data: incorrect header check)"),
    ],
    "huge-numbers.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: number is infinity when parsed as double (line 2, column 43)"),
        # orjson would read 2**70 + 1 as a float and lose its last digits.
        (":3", "an integer beyond 64 bits, which cannot be sent exactly"),
        # Within 64 bits (unsigned) an integer is exact; 1e308 is a finite double.
        (":4", {"nmi": "8001000004", "availablePhasesCount": 2**64 - 1, "approvedCapacity": 1e308}),
        (":5", {"nmi": "8001000005"}),
    ],
    "duplicate-keys.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "duplicate key 'jobNumber' in one object; which value is meant is unclear"),
        (":3", "duplicate key 'nmi' in one object"),
        (":4", {"nmi": "8001000004"}),
    ],
    "control-chars.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: unexpected control character in string (line 2, column 39)"),
        # Escaped, they are valid JSON and part of the text.
        (":3", {"nmi": "8001000003", "comments": "bell \x07 nul \x00 esc \x1b"}),
        (":4", {"nmi": "8001000004"}),
    ],
    "lone-surrogate.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: no low surrogate in string (line 2, column 36)"),
        (":3", {"nmi": "8001000003"}),
    ],
    "not-quite-json.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "broken JSON: unexpected character, expected a string key (line 2, column 2)"),
        (":3", "broken JSON: unexpected content after document (line 3, column 23)"),
        (":4", "broken JSON: trailing comma is not allowed (line 4, column 21)"),
        (":5", "broken JSON: number with leading zero is not allowed (line 5, column 43)"),
        (":6", {"nmi": "8001000006"}),
    ],
    "crlf.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "comments": "x"}),
        (":4", {"nmi": "8001000004"}),
    ],
    # 70,000 spaces and a tab: a blank line longer than one read.
    "long-whitespace-line.jsonl": [(":1", {"nmi": "8001000001"}), (":3", {"nmi": "8001000003"})],
    # Not gzip whatever the name says: the content decides.
    "plain-named-gz.jsonl.gz": [(":1", {"nmi": "8001000001"}), (":2", {"nmi": "8001000002"})],
    "array-of-junk.json": [
        ("[0]", {"nmi": "8001000001"}),
        ("[1]", None),
        ("[2]", "8001000003"),
        ("[3]", [{"nmi": "8001000004"}]),
        ("[4]", True),
        ("[5]", {"nmi": "8001000006"}),
    ],
    # Valid JSON that is wrong as a record: the value comes through as it is, for pre-flight
    # to judge (tests/test_bad_inputs.py follows each of these to its outcome).
    "data-not-an-object.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", "8001000002"),
        (":3", None),
        (":4", {"data": {"nmi": "8001000004"}}),
        (":5", {"nmi": "8001000005"}),
    ],
    "wrapped-extra-keys.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"data": {"nmi": "8001000002"}, "source": "crm"}),
        (":3", {"nmi": "8001000003"}),
    ],
    "wrong-types.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "jobNumber": 42, "acConnections": {"count": 1}}),
        (":3", {"nmi": 8001000003}),
        (":4", {"nmi": "8001000004"}),
    ],
    "missing-nmi.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"jobNumber": "JOB-2"}),
        (":3", {}),
        (":4", {"nmi": None}),
        (":5", {"nmi": "8001000005"}),
    ],
    "nmi-wrong-length.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "800100002"}),
        (":3", {"nmi": "80010000033"}),
        (":4", {"nmi": ""}),
        (":5", {"nmi": "8001000005"}),
    ],
    "mistyped-field.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "exportLimitKW": 5}),
        (":3", {"nmi": "8001000003", "acConnections": [{"equipmentTyp": "Inverter", **DEV}]}),
        (":4", {"nmi": "8001000004"}),
    ],
    "same-nmi-twice.jsonl": [
        (":1", {"nmi": "8001000001", "jobNumber": "FIRST"}),
        (":2", {"nmi": "8001000002"}),
        (":3", {"nmi": "8001000001", "jobNumber": "SECOND"}),
    ],
    "array-for-object.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "acConnections": [{"details": ["Fronius"], **DEV}]}),
        (":3", {"nmi": "8001000003", "acConnections": [[DEV]]}),
        (":4", {"nmi": "8001000004"}),
    ],
    "number-as-string.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "approvedCapacity": "10"}),
        (":3", {"nmi": "8001000003", "availablePhasesCount": "3"}),
        (":4", {"nmi": "8001000004"}),
    ],
    "boolean-for-number.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "approvedCapacity": True}),
        (":3", {"nmi": "8001000003", "availablePhasesCount": False}),
        (":4", {"nmi": "8001000004"}),
    ],
    "negative-count.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "availablePhasesCount": -1}),
        (":3", {"nmi": "8001000003", "acConnections": [{"count": -2, **DEV}]}),
        (":4", {"nmi": "8001000004"}),
    ],
    "fractional-count.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (":2", {"nmi": "8001000002", "acConnections": [{"count": 1.5, **DEV}]}),
        (":3", {"nmi": "8001000003", "installedPhasesCount": 1.0}),
        (":4", {"nmi": "8001000004"}),
    ],
    "server-fields.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (
            ":2",
            {
                "nmi": "8001000002",
                "acConnections": [
                    {"connectionId": 7, "devices": [{"type": "Solar PV", "deviceId": 9}]}
                ],
            },
        ),
        (":3", {"nmi": "8001000003", "recordCreationDate": "2024-01-01"}),
        (":4", {"nmi": "8001000004"}),
    ],
    "invalid-date.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (
            ":2",
            {"nmi": "8001000002", "acConnections": [{"commissioningDate": "2024-02-30", **DEV}]},
        ),
        (
            ":3",
            {"nmi": "8001000003", "acConnections": [{"commissioningDate": "01/03/2024", **DEV}]},
        ),
        (":4", {"nmi": "8001000004"}),
    ],
    "enum-wrong-case.jsonl": [
        (":1", {"nmi": "8001000001"}),
        (
            ":2",
            {
                "nmi": "8001000002",
                "acConnections": [
                    {"equipmentType": "Solar PV Inverter", "devices": [{"type": "solar pv"}]}
                ],
            },
        ),
        (":3", {"nmi": "8001000003", "islandableInstallation": "yes"}),
        (":4", {"nmi": "8001000004"}),
    ],
}


def test_corpus_table_covers_every_file() -> None:
    """Each file in tests/data/bad has its row in the table, and each row its file."""
    assert sorted(CORPUS) == sorted(p.name for p in BAD.iterdir())


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_bad_input_corpus(name: str) -> None:
    """Each problem is one item with a useful reason, and the good records around it remain."""
    path = str(BAD / name)
    # The same file again afterwards shows that reading goes on to the next input.
    items = await collect([path, path])
    half = len(items) // 2
    assert items[:half] == items[half:]
    got = items[:half]
    assert [str(i.source) for i in got] == [path + where for where, _ in CORPUS[name]]
    for item, (_, expected) in zip(got, CORPUS[name], strict=True):
        if isinstance(expected, str) and item.error is not None:
            assert expected in item.error
        else:
            assert (item.error, item.value) == (None, expected)


def split(data: bytes, size: int, limit: int = 1000) -> list[Element | SplitError]:
    splitter = ArraySplitter(max_element_bytes=limit)
    events = [e for i in range(0, len(data), size) for e in splitter.feed(data[i : i + size])]
    return events + splitter.close()


NESTED = b'{"a": ' + b"[" * 12 + b'"]}"' + b"]" * 12 + b"}"
TRICKY = b'[ {"a": "x,]}\\"[\\\\", "b": [1, {"c": "}"}]},\n 2 , "s\\"",\n' + NESTED + b", null ]"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(TRICKY)])
def test_splitter_gives_the_same_elements_whatever_the_chunking(size: int) -> None:
    """Strings, escapes, nesting deeper than one regex match: chunk boundaries change nothing."""
    events = split(TRICKY, size)
    assert all(isinstance(e, Element) for e in events)
    elements = [e for e in events if isinstance(e, Element)]
    assert [orjson.loads(e.data) for e in elements] == orjson.loads(TRICKY)
    assert [(e.index, e.line, e.column) for e in elements] == [
        (0, 1, 3),
        (1, 2, 2),
        (2, 2, 6),
        (3, 3, 1),
        (4, 3, len(NESTED) + 3),
    ]
    assert [TRICKY[e.offset : e.offset + len(e.data)] for e in elements] == [
        e.data for e in elements
    ]


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_splitter_reports_an_oversized_element_once(size: int) -> None:
    """An element over the limit is one error however it arrives, and the next is whole."""
    data = b'[{"a": "' + b"x" * 3000 + b'"}, {"b": [1]}]'
    events = split(data, size)
    assert events == [
        SplitError("record over 1000 bytes", 1, 0),
        Element(b'{"b": [1]}', 1, 1, 3013, 3012),
    ]


def test_splitter_keeps_a_stray_brace_inside_its_element() -> None:
    """A "}" too many does not end the array: its element fails alone, the next is read."""
    events = split(b'[{"a": 1}}, {"b": 2}]', 3)
    assert [e.data for e in events if isinstance(e, Element)] == [b'{"a": 1}}', b'{"b": 2}']


@pytest.mark.parametrize("data", [b"[]", b" [ \n ] \n"])
def test_splitter_empty_array_has_no_elements(data: bytes) -> None:
    """`[]` is an empty array, not an empty element."""
    assert split(data, 1) == []


def test_splitter_hands_back_what_follows_the_array() -> None:
    """Bytes after the closing bracket are not split; they are handed back with their place."""
    splitter = ArraySplitter(max_element_bytes=100, line=3, offset=10)
    events = splitter.feed(b'[1]\n  {"x": 1}\n')
    assert events == [Element(b"1", 0, 3, 2, 11)]
    assert splitter.rest is not None
    assert (splitter.rest.data, splitter.rest.line, splitter.rest.column) == (b'{"x": 1}\n', 4, 3)
    assert splitter.rest.offset == 16
    assert splitter.feed(b"[2]") == []
    assert splitter.close() == []


def test_check_paths_accepts_files_and_one_stdin(tmp_path: Path) -> None:
    """Readable files and a single `-` pass."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"")
    check_paths([str(path), "-", str(path)])


def test_check_paths_does_not_wait_for_a_named_pipe(tmp_path: Path) -> None:
    """A FIFO with no writer yet passes without blocking: it is not opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check_paths([str(fifo)])


def test_check_paths_refuses_a_missing_path(tmp_path: Path) -> None:
    """A missing path is an InputError (exit 2) naming the path."""
    path = str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="input file not found: ") as caught:
        check_paths(["-", path])
    assert path in str(caught.value)
    assert caught.value.exit_code == 2


def test_check_paths_refuses_a_directory(tmp_path: Path) -> None:
    """A directory is an InputError that says so."""
    with pytest.raises(InputError, match="input path is a directory, not a file: ") as caught:
        check_paths([str(tmp_path)])
    assert str(tmp_path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_check_paths_refuses_an_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is an InputError."""
    path = tmp_path / "secret.jsonl"
    path.write_bytes(b"")
    path.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        check_paths([str(path)])


def test_check_paths_refuses_stdin_twice() -> None:
    """Standard input can be read once."""
    with pytest.raises(InputError, match="more than once"):
        check_paths(["-", "-"])


async def test_file_gone_after_the_check_is_an_error_item(tmp_path: Path) -> None:
    """A path that vanished after check_paths is reported, and the next input is read."""
    items = await collect([str(tmp_path / "gone.jsonl"), "-"], stdin=io.BytesIO(b"{}"))
    assert items[0].error == "cannot open file: No such file or directory"
    assert items[1].value == {}


async def test_chunk_lines_below_one_is_refused() -> None:
    """A batch size of zero would read nothing; it is refused."""
    with pytest.raises(ValueError, match="chunk_lines"):
        await collect(["-"], stdin=io.BytesIO(b"{}"), chunk_lines=0)


async def test_stopping_early_closes_the_file(tmp_path: Path) -> None:
    """Leaving the iteration early releases the input file."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(RECORDS))

    def open_paths() -> set[str]:
        return {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}

    read_from: set[int] = set()

    def read(fd: int, size: int) -> bytes:
        read_from.add(fd)
        return os.read(fd, size)

    real = os.path.realpath(path)
    async with asyncio.timeout(10):
        items = iter_items([str(path)], chunk_lines=1, read=read)
        await anext(items)
        assert real in open_paths()
        await items.aclose()
    assert len(read_from) == 1  # the file was read, through `read`
    assert real not in open_paths()


async def test_a_file_that_shrinks_while_read(tmp_path: Path) -> None:
    """Cut short after its first read: the lines read are items, the cut is one error item
    at the line it happened, and the next input is read as usual."""
    records: list[dict[str, object]] = [
        {"nmi": f"80010{n:05d}", "comments": "x" * 3000} for n in range(1, 41)
    ]
    shrinks = tmp_path / "shrinks.jsonl"
    shrinks.write_bytes(jsonl(records))
    after = tmp_path / "after.jsonl"
    after.write_bytes(jsonl([{"nmi": "8001000099"}]))
    whole = shrinks.read_bytes()[:READ_SIZE].count(b"\n")
    assert 0 < whole < 40

    def read(fd: int, size: int) -> bytes:
        chunk = os.read(fd, size)
        if os.fstat(fd).st_size > READ_SIZE + 10:
            # Another process truncates the file between two reads.
            os.truncate(shrinks, READ_SIZE + 10)
        return chunk

    items = await collect([str(shrinks), str(after)], read=read)
    assert [item.value for item in items[:whole]] == records[:whole]
    assert [item.source for item in items[:whole]] == [
        SourceRef(str(shrinks), line) for line in range(1, whole + 1)
    ]
    cut = items[whole]
    assert cut.source == SourceRef(str(shrinks), whole + 1)
    assert cut.error is not None
    assert cut.error.startswith("file shrank while being read")
    assert cut.error.endswith(f"after line {whole}")
    [last] = items[whole + 1 :]
    assert (last.source, last.value) == (SourceRef(str(after), 1), {"nmi": "8001000099"})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Settled by counting quotes: no backslash, no long run of digits.
        (b'{"nmi":"8001000001","a":"x","a":"y"}', "duplicate key 'a'"),
        (b'{"nmi":"8001000001","a":{"b":1,"b":2}}', "duplicate key 'b'"),
        (b'{"data":{"nmi":"8001000001","nmi":"8001000002"}}', "duplicate key 'nmi'"),
        (b'{"nmi":"8001000001","a":[{"b":1},{"b":1,"b":1}]}', "duplicate key 'b'"),
        # An escaped quote defeats the count: the standard library reads these.
        (b'{"nmi":"8001000001","a":"q\\"","a":"r"}', "duplicate key 'a'"),
        (b'{"nmi":"8001000001","a":"q\\"\\""}', None),
        # 19 digits in a row are read again; only an integer beyond 64 bits is refused.
        (b'{"nmi":"8001000001","a":18446744073709551615}', None),
        (b'{"nmi":"8001000001","a":18446744073709551616}', "an integer beyond 64 bits"),
        (b'{"nmi":"8001000001","a":"18446744073709551616123"}', None),
        (b'{"nmi":"8001000001","a":1.12345678901234567891}', None),
    ],
)
def test_ambiguous_values_found_whichever_way_they_are_checked(
    tmp_path: Path, line: bytes, expected: str | None
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(line + b"\n")
    [item] = asyncio.run(collect([str(path)]))
    if expected is None:
        assert item.error is None
        value = orjson.loads(line)
        assert item.value == value
    else:
        assert item.error is not None
        assert expected in item.error


class _Ambiguous(Exception):
    pass


def _oracle(line: bytes) -> str | None:
    """What the standard library, reading every key and digit, finds wrong with `line`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in items}) < len(items):
            raise _Ambiguous("duplicate key")
        return dict(items)

    def integer(text: str) -> int:
        if not -(2**63) <= int(text) < 2**64:
            raise _Ambiguous("an integer beyond 64 bits")
        return int(text)

    try:
        json.loads(line, object_pairs_hook=pairs, parse_int=integer)
    except _Ambiguous as exc:
        return str(exc)
    return None


def _random_value(rng: random.Random, depth: int = 0) -> str:
    """JSON text meant to trip a count: escaped quotes and backslashes, keys named twice,
    integers either side of 64 bits, long digit runs inside strings."""

    def text() -> str:
        chars = ["a", '"', "\\", "\u00e9", " ", "9" * rng.randint(1, 22), "\u2028", "/", "\n"]
        value = "".join(rng.choice(chars) for _ in range(rng.randint(0, 5)))
        return json.dumps(value, ensure_ascii=rng.random() < 0.5)

    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return text()
    if roll < 0.55:
        edge = rng.choice([2**63, -(2**63), 2**64, 10**19, 10**20, 10**25])
        numbers = [
            str(rng.randint(-(10**6), 10**6)),
            str(edge + rng.randint(-2, 2)),
            repr(rng.uniform(-1e6, 1e6)),
            "12345678901234567890.5",
            "1.5e19",
        ]
        return rng.choice(numbers)
    if roll < 0.65:
        return rng.choice(["true", "false", "null"])
    if roll < 0.85:
        keys = [json.dumps(rng.choice(["a", "b", "nmi", 'q"'])) for _ in range(rng.randint(0, 4))]
        return "{" + ",".join(f"{k}:{_random_value(rng, depth + 1)}" for k in keys) + "}"
    return "[" + ",".join(_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096])
def test_the_splitter_agrees_with_a_full_parse_however_the_input_is_chunked(size: int) -> None:
    """Over 300 seeded random arrays, some nested deeper than one regex match reaches, each
    element is what the standard library finds reading the whole array, at any chunking."""
    rng = random.Random(size)
    for _ in range(300):
        values = [_random_value(rng) for _ in range(rng.randint(0, 6))]
        values += ["[" * 10 + value + "]" * 10 for value in values[: rng.randint(0, 2)]]
        rng.shuffle(values)
        data = ("[" + rng.choice([",", ",\n ", " , "]).join(values) + "]").encode()
        events = split(data, size, limit=len(data))
        assert [json.loads(e.data) for e in events if isinstance(e, Element)] == json.loads(data), (
            data
        )
        assert all(isinstance(e, Element) for e in events), data


def test_the_counting_check_agrees_with_a_full_parse(tmp_path: Path) -> None:
    """Over 3000 seeded random records, duplicate keys and long integers are found exactly
    where the standard library, reading everything, finds them; no other record is refused."""
    rng = random.Random(20261128)
    lines = [f'{{"nmi":"8001000001","v":{_random_value(rng)}}}'.encode() for _ in range(3000)]
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = asyncio.run(collect([str(path)]))
    assert len(items) == len(lines)
    found = {"duplicate key": 0, "an integer beyond 64 bits": 0}
    for line, item in zip(lines, items, strict=True):
        expected = _oracle(line)
        if expected is None:
            assert item.error is None, line
            assert item.value == orjson.loads(line)
        else:
            assert item.error is not None, line
            assert item.error.startswith(expected), (line, item.error)
            found[expected] += 1
    # The corpus exercises both refusals, not just clean records.
    assert min(found.values()) >= 50, found
