"""Inputs that could hang a run or hold its records back, and inputs in the wrong shape.

A named pipe, an idle or slow pipe, an endless line: each is read as `wem-der` reads it,
by a real process where a signal or a second reader matters, and every wait is bounded.
Then foreign encodings, pretty-printed JSON, short first reads and the open-file limit,
through the reader itself.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.read.formats import items_from_chunks
from wem_der.read.sources import MAX_ITEM_BYTES, iter_items
from wem_der.records.outcomes import SourceItem

from tests.e2e import records, write_jsonl
from tests.processes import (
    RUN_TIMEOUT_S,
    Sim,
    has_lines,
    outcome_lines,
    start,
    stop,
    wait_until,
    wem_der,
)

# How long a stopped process may take to end: far more than it needs, far less than a hang.
STOP_TIMEOUT_S = 10.0


def _by_outcome(out: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in outcome_lines(out):
        found.setdefault(line["outcome"], []).append(line)
    return found


def _line(record: object) -> bytes:
    return orjson.dumps(record) + b"\n"


# --- named pipes, idle pipes, endless lines, signals -----------------------------------


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_a_named_pipe_is_opened_once(register: Sim, tmp_path: Path, command: str) -> None:
    """`cat records.jsonl > p & wem-der validate p`: every record is read, and the writer
    is not cut off (no check opens the pipe before the read does)."""
    recs = records(3)
    source = write_jsonl(tmp_path / "records.jsonl", recs)
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    args = [command, str(fifo)]
    if command == "submit":
        args += ["--out", str(out), *register.flags(tmp_path / "state")]
    writer = subprocess.Popen(["sh", "-c", 'exec cat "$1" > "$2"', "sh", str(source), str(fifo)])
    try:
        done = wem_der(*args)
        written = writer.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=STOP_TIMEOUT_S)
    assert written == 0, "the writer was cut off (SIGPIPE)"
    if command == "validate":
        assert done.code == 0, done.output
        assert "3 records: 3 valid, 0 invalid" in done.stdout
    else:
        assert done.code == 0, done.output
        accepted = _by_outcome(out)["accepted"]
        assert sorted(line["nmi"] for line in accepted) == sorted(r["nmi"] for r in recs)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_slow_pipe_sends_each_record_at_once_and_a_stop_does_not_wait_for_it(
    register: Sim, tmp_path: Path, signum: signal.Signals
) -> None:
    """`producer | wem-der submit -`: each record is sent while the pipe stays open, as
    soon as its line is complete. A signal then stops the run although the producer is
    idle, and one failed line says after which line standard input was left."""
    recs = records(2)
    out = tmp_path / "out"
    log = tmp_path / "log"
    args = ["submit", "-", "--out", str(out), *register.flags(tmp_path / "state")]
    proc = start(*args, log=log, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for count, record in enumerate(recs, 1):
            proc.stdin.write(_line(record))
            proc.stdin.flush()
            wait_until(
                proc,
                partial(has_lines, out, count),
                timeout_s=RUN_TIMEOUT_S,
                what=f"the outcome of record {count} while the pipe is open",
            )
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signum)
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        stop(proc)
        proc.stdin.close()
    assert code == 3, log.read_text()
    found = _by_outcome(out)
    assert [line["source"]["line"] for line in found["accepted"]] == [1, 2]
    [left] = found["failed"]
    assert left["source"] == {"path": "-", "line": 3}
    assert left["reason"].startswith("not sent: the run stopped")
    assert "nothing was read after line 2" in left["reason"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_endless_line_is_refused_while_it_is_read_and_a_signal_stops_it(
    register: Sim, tmp_path: Path, signum: signal.Signals
) -> None:
    """`wem-der submit /dev/zero`: the line over the limit is refused as soon as it is, in
    memory that stays bounded, and the first signal ends the run."""
    out = tmp_path / "out"
    log = tmp_path / "log"
    args = ["submit", "/dev/zero", "--out", str(out), *register.flags(tmp_path / "state")]
    proc = start(*args, log=log)
    try:
        wait_until(
            proc,
            lambda: (out / "invalid.jsonl").exists() and has_lines(out, 1),
            timeout_s=RUN_TIMEOUT_S,
            what="the endless line to be refused",
        )
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signum)
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        stop(proc)
    assert code == 3, log.read_text()
    found = _by_outcome(out)
    [endless] = found["invalid"]
    assert endless["source"] == {"path": "/dev/zero", "line": 1}
    assert f"more than {MAX_ITEM_BYTES} bytes" in endless["reason"]
    [left] = found["failed"]
    assert "nothing was read after line 0" in left["reason"]


def test_a_second_signal_stops_the_reading_of_a_file_at_once(register: Sim, tmp_path: Path) -> None:
    """A regular file is read to its end after the first signal, so that each of its
    records is accounted for; the second stops the run at once, even mid-way through a
    terabyte of one endless line."""
    big = tmp_path / "big.jsonl"
    with big.open("wb") as file:
        file.truncate(2**40)  # sparse: no disk is used
    out = tmp_path / "out"
    log = tmp_path / "log"
    args = ["submit", str(big), "--out", str(out), *register.flags(tmp_path / "state")]
    proc = start(*args, log=log)
    try:
        wait_until(
            proc,
            lambda: b"outcomes in" in log.read_bytes(),
            timeout_s=RUN_TIMEOUT_S,
            what="the run to start",
        )
        proc.send_signal(signal.SIGTERM)
        wait_until(
            proc,
            lambda: b"stopping" in log.read_bytes(),
            timeout_s=RUN_TIMEOUT_S,
            what="the first signal to be seen",
        )
        assert proc.poll() is None, "the terabyte was read in no time"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        stop(proc)
    assert code == 3, log.read_text()
    assert "stopped at once" in log.read_text()


def test_validate_stops_on_ctrl_c_while_standard_input_is_idle(tmp_path: Path) -> None:
    """`producer | wem-der validate -` with an idle producer: Ctrl-C ends it (exit 3)."""
    log = tmp_path / "log"
    proc = start("validate", "-", log=log, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"not json\n")  # invalid: validate prints it at once
        proc.stdin.flush()
        wait_until(
            proc,
            lambda: b"-:1" in log.read_bytes(),
            timeout_s=RUN_TIMEOUT_S,
            what="the first record to be checked",
        )
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        stop(proc)
        proc.stdin.close()
    assert code == 3, log.read_text()
    assert "wem-der: stopped" in log.read_text()


# --- the reader: idle pipes, stops, cancellation -----------------------------------------


class _Pipe:
    """A pipe whose write end the test holds, as a producer would, until the block ends
    (in the test itself, so that a reader stuck on it is let go before its loop closes)."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        self.reader = os.fdopen(read_end, "rb", buffering=0)

    def write(self, data: bytes) -> None:
        os.write(self._write_end, data)

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._write_end)
        self.reader.close()


async def test_a_record_comes_as_soon_as_its_line_is_complete() -> None:
    """The reader hands a record over as soon as its line ends, not when a batch is full
    or the writer closes the pipe."""
    recs = records(2)
    with _Pipe() as pipe:
        items = iter_items(["-"], stdin=pipe.reader)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                pipe.write(_line(recs[0]))
                first = await anext(items)
                pipe.write(_line(recs[1]))
                second = await anext(items)
        finally:
            await items.aclose()
    assert [first.value, second.value] == recs


async def test_a_stop_leaves_an_idle_stream_and_says_where() -> None:
    """Once the run stops, an idle stream is not waited for: it ends with one item after
    the last line read."""
    stopping = asyncio.Event()
    with _Pipe() as pipe:
        items = iter_items(["-"], stdin=pipe.reader, stop=stopping)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            pipe.write(_line(records(1)[0]))
            await anext(items)
            stopping.set()
            rest = [item async for item in items]
    [left] = rest
    assert left.source.line == 2
    assert left.error is not None
    assert "cannot be read again: nothing was read after line 1" in left.error


async def test_leaving_an_idle_stream_frees_the_caller_and_the_reader() -> None:
    """Cancelled while the pipe is idle: the caller is free at once, and no thread is left
    behind waiting on the pipe."""
    before = set(threading.enumerate())
    with _Pipe() as pipe:
        items = iter_items(["-"], stdin=pipe.reader)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            pipe.write(_line(records(1)[0]))
            await anext(items)
            waiting = asyncio.create_task(anext(items))
            await asyncio.sleep(0)  # let it start waiting
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        left = set(threading.enumerate()) - before
    assert not left


# --- encodings ------------------------------------------------------------------------


async def _read(*paths: Path) -> list[SourceItem]:
    async with asyncio.timeout(STOP_TIMEOUT_S):
        return [item async for item in iter_items([str(path) for path in paths])]


def _jsonl_text(recs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in recs)


@pytest.mark.parametrize(
    ("codec", "named"),
    [
        ("utf-16", "UTF-16LE"),  # with a byte order mark
        ("utf-16-le", "UTF-16LE"),
        ("utf-16-be", "UTF-16BE"),
        ("utf-32", "UTF-32LE"),
        ("utf-32-le", "UTF-32LE"),
        ("utf-32-be", "UTF-32BE"),
    ],
)
async def test_a_file_in_utf16_or_utf32_is_one_refusal_that_names_it(
    tmp_path: Path, codec: str, named: str
) -> None:
    """Not one refusal per line with bytes 0xff and NUL: one, at line 1, that names the
    encoding and how to convert it."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(_jsonl_text(records(3)).encode(codec))
    gzipped = tmp_path / "in.jsonl.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    items = await _read(path, gzipped)
    assert [(item.source.path, item.source.line) for item in items] == [
        (str(path), 1),
        (str(gzipped), 1),
    ]
    for item in items:
        assert item.error is not None
        assert f"looks like {named} text" in item.error
        assert f"iconv -f {named} -t UTF-8" in item.error


def test_validate_says_once_that_a_file_is_utf16(tmp_path: Path) -> None:
    """`wem-der validate` of a UTF-16 file, as Windows tools save it: one line, exit 1."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(_jsonl_text(records(3)).encode("utf-16"))
    done = wem_der("validate", str(path))
    assert done.code == 1, done.output
    assert done.stdout.count("looks like UTF-16LE text") == 1
    assert "1 records: 0 valid, 1 invalid" in done.stdout


async def test_utf8_byte_order_marks_are_passed_over(tmp_path: Path) -> None:
    """A UTF-8 BOM carries no meaning: at the start of a file, and where `cat` of two such
    files puts the second one's, at the start of a line."""
    recs = records(4)
    one = b"\xef\xbb\xbf" + _jsonl_text(recs[:2]).encode()
    two = b"\xef\xbb\xbf  " + _jsonl_text(recs[2:]).encode()
    path = tmp_path / "both.jsonl"
    path.write_bytes(one + two)
    items = await _read(path)
    assert [(item.source.line, item.error, item.value) for item in items] == [
        (n, None, record) for n, record in enumerate(recs, 1)
    ]


async def test_a_line_in_utf16_among_utf8_ones_says_why_it_is_refused(tmp_path: Path) -> None:
    """A UTF-16 file appended to a UTF-8 one: its lines are refused for their NUL bytes."""
    recs = records(2)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(_line(recs[0]) + _jsonl_text(recs[1:]).encode("utf-16-le"))
    first, *rest = await _read(path)
    assert first.value == recs[0]
    assert rest  # the line, and the NUL that follows its newline in UTF-16
    for item in rest:
        assert item.error is not None
        assert item.error.startswith("a NUL byte (0x00) at byte offset")
        assert "UTF-16 or UTF-32" in item.error


# --- pretty-printed JSON --------------------------------------------------------------


async def test_pretty_printed_objects_one_after_another_are_records(tmp_path: Path) -> None:
    """`jq . a.jsonl > b.json`: each object is one record, at the line it starts on."""
    recs = records(3)
    path = tmp_path / "pretty.json"
    path.write_text("".join(json.dumps(record, indent=2) + "\n" for record in recs))
    starts = [1]
    for record in recs[:-1]:
        starts.append(starts[-1] + json.dumps(record, indent=2).count("\n") + 1)
    items = await _read(path)
    assert [(item.source.line, item.source.index, item.error) for item in items] == [
        (line, None, None) for line in starts
    ]
    assert [item.value for item in items] == recs
    done = wem_der("validate", str(path))
    assert "3 records: 3 valid, 0 invalid" in done.stdout, done.output


async def test_a_broken_pretty_printed_object_is_one_refusal_where_it_breaks(
    tmp_path: Path,
) -> None:
    """A broken object is one refusal that says where, and the next one is read; one cut
    short at the end of the file is one refusal too."""
    path = tmp_path / "pretty.json"
    path.write_text(
        '{\n  "nmi": "8001000001"\n}\n'
        '{\n  "nmi": "8001000002",\n  "ok": tru\n}\n'
        '{\n  "nmi": "8001000003"\n}\n'
        '{\n  "nmi": "8001000004",\n'
    )
    items = await _read(path)
    assert [(item.source.line, item.value) for item in items] == [
        (1, {"nmi": "8001000001"}),
        (4, None),
        (8, {"nmi": "8001000003"}),
        (11, None),
    ]
    assert items[1].error == "broken JSON: invalid literal, expected 'true' (line 6, column 9)"
    assert items[3].error == "JSON value truncated: the value starting at line 11 is incomplete"


async def test_arrays_and_objects_one_after_another_are_all_read(tmp_path: Path) -> None:
    """`cat a.json b.json c.jsonl`: two arrays, a pretty-printed object, then JSON Lines."""
    recs = records(5)
    path = tmp_path / "all.json"
    path.write_text(
        json.dumps(recs[:2], indent=2)
        + "\n"
        + json.dumps(recs[2:3])
        + "\n"
        + json.dumps(recs[3], indent=2)
        + "\n"
        + _jsonl_text(recs[4:])
    )
    items = await _read(path)
    assert [item.error for item in items] == [None] * 5
    assert [item.value for item in items] == recs


# --- short reads ---------------------------------------------------------------------


def _one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    return (data[at : at + 1] for at in range(len(data)))


@pytest.mark.parametrize("form", ["gzip", "bom", "utf-16"])
def test_a_pipe_that_gives_one_byte_at_a_time_is_read_as_a_file(form: str) -> None:
    """The format and encoding are told from the first bytes, however few a read gives."""
    recs = records(2)
    text = _jsonl_text(recs)
    data = {
        "gzip": gzip.compress(text.encode()),
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "utf-16": text.encode("utf-16"),
    }[form]
    items = list(items_from_chunks("-", _one_byte_at_a_time(data), MAX_ITEM_BYTES))
    if form == "utf-16":
        [item] = items
        assert "looks like UTF-16LE text" in (item.error or "")
    else:
        assert [(item.error, item.value) for item in items] == [(None, r) for r in recs]


# --- open files -------------------------------------------------------------------------


def _inputs_open(directory: Path) -> int:
    """How many of this process's descriptors are files in `directory`."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listing the directory, closed by now
        found += target.startswith(f"{directory}/")
    return found


async def test_one_input_is_open_at_a_time(tmp_path: Path) -> None:
    """Thousands of files under a small `ulimit -n`: the reader holds one open at most."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = [write_jsonl(inputs / f"{n:03d}.jsonl", records(2, start=2 * n)) for n in range(40)]
    most = 0
    async with asyncio.timeout(STOP_TIMEOUT_S):
        async for _ in iter_items([str(path) for path in paths], chunk_lines=1):
            most = max(most, _inputs_open(inputs))
    assert most == 1


async def test_out_of_descriptors_is_named_with_the_limit_to_raise(tmp_path: Path) -> None:
    """EMFILE on opening an input: "too many open files", and `ulimit -n` to raise."""
    path = write_jsonl(tmp_path / "in.jsonl", records(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    # No descriptor is free under this limit: the next open fails with EMFILE.
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        [item] = await _read(path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert item.error is not None
    assert item.error.startswith("cannot open file: too many open files")
    assert "ulimit -n" in item.error
