"""Bad input, end to end through `wem-der submit`: each problem is one record's clear outcome
(invalid, with a reason that names it, at its own source line) or, for a path that cannot
be read at all, a clear error (exit 2, no traceback); the good records beside the bad ones
are accepted and stored as written, and nothing crashes.

The corpus is `tests/data/bad/` (its reading is pinned record by record in test_sources.py);
inputs too large to commit are made here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.read.sources import iter_items
from wem_der.simulator import Simulator

from tests.e2e import (
    assert_each_once,
    endpoint_flags,
    read_summary,
    run_cli,
    run_settings,
    sim_settings,
    source_key,
    submit,
    write_jsonl,
)
from tests.register import unstamped

BAD = Path(__file__).parent / "data" / "bad"
MB = 2**20

# (where in the file, None for "accepted" or the fragments its invalid reason must hold)
Expect = tuple[str, tuple[str, ...] | None]


def ok(where: str) -> Expect:
    return (where, None)


def bad(where: str, *fragments: str) -> Expect:
    return (where, fragments)


NOT_AN_NMI = "nmi: expected an NMI matching ^[A-HJ-NP-Z0-9]{10}$"
REGISTER_OWNS = "is maintained by the register and cannot be submitted"

# Every file of the corpus, every record of it, in order.
EXPECTED: dict[str, list[Expect]] = {
    "array-broken-item.json": [
        ok("[0]"),
        bad("[1]", "broken JSON: unexpected character, expected ',' or '}' (line 3, column 24)"),
        ok("[2]"),
    ],
    "array-for-object.jsonl": [
        ok(":1"),
        bad(":2", "acConnections[0].details: expected an object, got array"),
        bad(":3", "acConnections[0]: expected an object, got array"),
        ok(":4"),
    ],
    "array-of-junk.json": [
        ok("[0]"),
        bad("[1]", "(record): expected a JSON object, got null"),
        bad("[2]", "(record): expected a JSON object, got string"),
        bad("[3]", "(record): expected a JSON object, got array"),
        bad("[4]", "(record): expected a JSON object, got boolean"),
        ok("[5]"),
    ],
    "array-stray-comma.json": [ok("[0]"), bad("[1]", "empty array item at line 1"), ok("[2]")],
    "array-trailing-junk.json": [
        ok("[0]"),
        ok("[1]"),
        ok(":5"),
        bad(":6", "broken JSON: invalid literal, expected 'true' (line 6, column 1)"),
        ok(":7"),
    ],
    "array-truncated.json": [
        ok("[0]"),
        ok("[1]"),
        bad("[2]", "JSON array truncated: item 2 starting at line 4 is incomplete"),
    ],
    "blank-lines.jsonl": [ok(":2"), ok(":6"), ok(":8")],
    "bom.jsonl": [ok(":1"), ok(":2")],
    "boolean-for-number.jsonl": [
        ok(":1"),
        bad(":2", "approvedCapacity: expected a number, got boolean"),
        bad(":3", "availablePhasesCount: expected a whole number, got boolean"),
        ok(":4"),
    ],
    "broken-json.jsonl": [
        ok(":1"),
        bad(":2", "broken JSON: unexpected end of data (line 2, column 22)"),
        ok(":3"),
    ],
    "control-chars.jsonl": [
        ok(":1"),
        bad(":2", "broken JSON: unexpected control character in string (line 2, column 39)"),
        ok(":3"),  # escaped control characters are text, sent and stored as they are
        ok(":4"),
    ],
    "crlf.jsonl": [ok(":1"), ok(":2"), ok(":4")],
    "data-not-an-object.jsonl": [
        ok(":1"),
        bad(":2", "(record): expected a JSON object, got string"),
        bad(":3", "(record): expected a JSON object, got null"),
        bad(":4", 'data: the record is wrapped in "data" twice'),
        ok(":5"),
    ],
    "deep-nesting.jsonl": [
        ok(":1"),
        bad(":2", "broken JSON: depth limit exceeded"),
        ok(":3"),
        # Read by orjson (1024 levels) but beyond what it can write, so never sendable.
        bad(":4", "nested more than 254 levels deep, which cannot be sent"),
        ok(":5"),
    ],
    "duplicate-keys.jsonl": [
        ok(":1"),
        bad(":2", "duplicate key 'jobNumber' in one object"),
        bad(":3", "duplicate key 'nmi' in one object"),
        ok(":4"),
    ],
    "empty.jsonl": [],
    "enum-wrong-case.jsonl": [
        ok(":1"),
        bad(":2", "acConnections[0].devices[0].type: 'solar pv' is not one of: ", "Solar PV"),
        bad(":3", "islandableInstallation: 'yes' is not one of: No, Yes"),
        ok(":4"),
    ],
    "fractional-count.jsonl": [
        ok(":1"),
        bad(":2", "acConnections[0].count: expected a whole number, got 1.5"),
        bad(":3", "installedPhasesCount: expected a whole number without a decimal point, got 1.0"),
        ok(":4"),
    ],
    "gzip-trailing-garbage.jsonl.gz": [
        ok(":1"),
        ok(":2"),
        bad(":3", "gzip stream corrupt", "after line 2"),
    ],
    "huge-numbers.jsonl": [
        ok(":1"),
        bad(":2", "number is infinity when parsed as double (line 2, column 43)"),
        bad(":3", "an integer beyond 64 bits, which cannot be sent exactly"),
        ok(":4"),  # 2**64 - 1 and 1e308: large, but exact
        ok(":5"),
    ],
    "invalid-date.jsonl": [
        ok(":1"),
        bad(":2", "acConnections[0].commissioningDate: expected a real date as yyyy-mm-dd"),
        bad(":3", "acConnections[0].commissioningDate: expected a date as yyyy-mm-dd"),
        ok(":4"),
    ],
    "lone-surrogate.jsonl": [
        ok(":1"),
        bad(":2", "broken JSON: no low surrogate in string (line 2, column 36)"),
        ok(":3"),
    ],
    "long-whitespace-line.jsonl": [ok(":1"), ok(":3")],
    "missing-nmi.jsonl": [
        ok(":1"),
        bad(":2", "nmi: required field is missing"),
        bad(":3", "nmi: required field is missing"),
        bad(":4", "nmi: expected a string, got null"),
        ok(":5"),
    ],
    "mistyped-field.jsonl": [
        ok(":1"),
        bad(":2", "exportLimitKW: unknown field; did you mean 'exportLimitkW'?"),
        bad(":3", "acConnections[0].equipmentTyp: unknown field; did you mean 'equipmentType'?"),
        ok(":4"),
    ],
    "nan.jsonl": [
        ok(":1"),
        bad(":2", "NaN and Infinity are not valid JSON numbers (line 2, column 40)"),
        bad(":3", "NaN and Infinity are not valid JSON numbers (line 3, column 41)"),
        ok(":4"),
    ],
    "negative-count.jsonl": [
        ok(":1"),
        bad(":2", "availablePhasesCount: expected 0 or more, got -1"),
        bad(":3", "acConnections[0].count: expected 0 or more, got -2"),
        ok(":4"),
    ],
    "nmi-wrong-length.jsonl": [
        ok(":1"),
        bad(":2", NOT_AN_NMI),
        bad(":3", NOT_AN_NMI),
        bad(":4", NOT_AN_NMI),
        ok(":5"),
    ],
    "non-utf8.jsonl": [
        ok(":1"),
        bad(":2", "not valid UTF-8: byte 0xff at byte offset 36"),
        ok(":3"),
    ],
    "not-an-object.jsonl": [
        bad("[0]", "(record): expected a JSON object, got number"),
        bad("[1]", "(record): expected a JSON object, got number"),
        bad(":2", "(record): expected a JSON object, got number"),
        bad(":3", "(record): expected a JSON object, got string"),
        bad(":4", "(record): expected a JSON object, got null"),
        bad(":5", "(record): expected a JSON object, got array"),
        ok(":6"),
    ],
    "not-quite-json.jsonl": [
        ok(":1"),
        bad(":2", "broken JSON: unexpected character, expected a string key (line 2, column 2)"),
        bad(":3", "broken JSON: unexpected content after document (line 3, column 23)"),
        bad(":4", "broken JSON: trailing comma is not allowed (line 4, column 21)"),
        bad(":5", "broken JSON: number with leading zero is not allowed (line 5, column 43)"),
        ok(":6"),
    ],
    "number-as-string.jsonl": [
        ok(":1"),
        bad(":2", "approvedCapacity: expected a number, got string"),
        bad(":3", "availablePhasesCount: expected a whole number, got string"),
        ok(":4"),
    ],
    "plain-named-gz.jsonl.gz": [ok(":1"), ok(":2")],
    # Both sent, in input order: the register ends with the second (checked below).
    "same-nmi-twice.jsonl": [ok(":1"), ok(":2"), ok(":3")],
    "server-fields.jsonl": [
        ok(":1"),
        bad(
            ":2",
            f"acConnections[0].connectionId: {REGISTER_OWNS}",
            f"acConnections[0].devices[0].deviceId: {REGISTER_OWNS}",
        ),
        bad(":3", f"recordCreationDate: {REGISTER_OWNS}"),
        ok(":4"),
    ],
    "truncated.jsonl.gz": [
        *(ok(f":{n}") for n in range(1, 7)),
        bad(":7", "gzip stream truncated after line 6"),
    ],
    "whitespace-only.jsonl": [],
    "wrapped-extra-keys.jsonl": [
        ok(":1"),
        bad(
            ":2", """data: a record wrapped as {"data": {...}} can have no other keys""", "'source'"
        ),
        ok(":3"),
    ],
    "wrong-types.jsonl": [
        ok(":1"),
        bad(
            ":2",
            "jobNumber: expected a string, got number",
            "acConnections: expected an array, got object",
        ),
        bad(":3", "nmi: expected a string, got number"),
        ok(":4"),
    ],
}


def good(n: int) -> bytes:
    return orjson.dumps({"nmi": f"80010{n:05d}"})


def make_large_inputs(directory: Path) -> dict[str, list[Expect]]:
    """Inputs over the 10 MB limit, made here rather than committed."""
    spaces = b" " * (11 * MB)
    oversized = orjson.dumps({"nmi": "8001000902", "comments": "x" * (11 * MB)})
    files = {
        # A record over AEMO's 10 MB limit is refused before it costs a request.
        "huge-record.jsonl": (
            b"\n".join([good(901), oversized, good(903)]) + b"\n",
            [ok(":1"), bad(":2", "record over 10 MB"), ok(":3")],
        ),
        # Whitespace is not a record, however long: not "over 10 MB", and the record after
        # it on its line is read.
        "huge-whitespace.jsonl": (
            b"\n".join([good(911), spaces, spaces + good(913), good(914)]) + b"\n",
            [ok(":1"), ok(":3"), ok(":4")],
        ),
        "huge-whitespace-array.json": (
            b"[" + good(921) + b"," + spaces + good(922) + b"]",
            [ok("[0]"), ok("[1]")],
        ),
    }
    for name, (data, _) in files.items():
        (directory / name).write_bytes(data)
    return {name: expect for name, (_, expect) in files.items()}


def test_every_corpus_file_has_its_expectations() -> None:
    """A file added to tests/data/bad must say here what becomes of each of its records."""
    assert sorted(EXPECTED) == sorted(p.name for p in BAD.iterdir())
    assert len(EXPECTED) >= 30


# A record's place: (path, line, None) in JSON Lines, (path, None, index) in an array (the
# lines of array items are pinned in test_sources.py).
Key = tuple[str, int | None, int | None]


def place(path: str, line: int | None, index: int | None) -> Key:
    return (path, None, index) if index is not None else (path, line, None)


def expected_places(paths: list[Path], expect: dict[str, list[Expect]]) -> dict[Key, Any]:
    """Each record's place, and None (accepted) or the fragments of its invalid reason."""
    wanted: dict[Key, Any] = {}
    for path in paths:
        for where, fragments in expect[path.name]:
            if where.startswith("["):
                wanted[place(str(path), None, int(where[1:-1]))] = fragments
            else:
                wanted[place(str(path), int(where[1:]), None)] = fragments
    return wanted


async def read_values(paths: list[str]) -> dict[Key, Any]:
    """Each record's value as read, in input order (the reader is tested in test_sources.py)."""
    return {
        place(item.source.path, item.source.line, item.source.index): item.value
        async for item in iter_items(paths)
        if item.error is None
    }


def outcome_lines(out: Path) -> dict[Key, dict[str, Any]]:
    """Every outcome line by its record's place; each place once, in the file of its outcome."""
    lines: dict[Key, dict[str, Any]] = {}
    for path in sorted(out.glob("*.jsonl")):
        for raw in path.read_bytes().splitlines():
            line = orjson.loads(raw)
            key = place(*source_key(line))
            assert key not in lines, f"{key} has two outcomes"
            assert line["outcome"] == path.stem
            lines[key] = line
    return lines


async def test_the_corpus_end_to_end(tmp_path: Path) -> None:
    """One `submit` of every bad file: each record's outcome and reason; the good ones stored."""
    async with asyncio.timeout(120):
        expect = EXPECTED | make_large_inputs(tmp_path)
        paths = sorted(BAD.iterdir()) + sorted(tmp_path.glob("huge-*"))
        out = tmp_path / "out"
        async with Simulator(sim_settings()) as sim:
            args = ["submit", *map(str, paths), "--out", str(out)]
            done = await run_cli([*args, *endpoint_flags(sim, tmp_path)], tmp_path)
            nmis = [version.record["nmi"] for version in sim.store.installations()]
            history = {nmi: sim.store.history(nmi) for nmi in nmis}
        assert done.code == 1, done.stderr  # invalid records, and nothing worse
        assert "Traceback" not in done.stderr
        found = outcome_lines(out)
        wanted = expected_places(paths, expect)
        assert sorted(found, key=str) == sorted(wanted, key=str)
        # A good record the register holds already (the files repeat some records) is a
        # duplicate of the earlier line that sent it: skipped. The others are sent, and the
        # register holds, per NMI, one version per accepted record, in input order, each
        # exactly as written (escaped control characters, 2**64 - 1 and 1e308 included).
        sent: dict[str, list[Any]] = {}
        duplicates = set()
        for key, value in (await read_values([str(p) for p in paths])).items():
            if key in wanted and wanted[key] is None:
                versions = sent.setdefault(value["nmi"], [])
                if versions and versions[-1] == value:
                    duplicates.add(key)
                else:
                    versions.append(value)
        problems = []
        for key, fragments in wanted.items():
            line = found[key]
            if key in duplicates:
                if line["outcome"] != "skipped" or "duplicates " not in line["reason"]:
                    problems.append(f"{key}: {line['outcome']} {line['reason']}")
            elif fragments is None:
                if line["outcome"] != "accepted":
                    problems.append(f"{key}: {line['outcome']} {line['reason']}")
            elif line["outcome"] != "invalid" or not all(
                fragment in (line["reason"] or "") for fragment in fragments
            ):
                problems.append(f"{key}: {line['outcome']} {line['reason']!r}")
        assert not problems, "\n".join(problems)
        held = {nmi: [unstamped(v.record) for v in versions] for nmi, versions in history.items()}
        assert held == sent
        summary = read_summary(out)
        invalid = sum(fragments is not None for fragments in wanted.values())
        assert (summary["records"], summary["invalid"]) == (len(wanted), invalid)
        assert (summary["accepted"], summary["skipped"]) == (
            len(wanted) - invalid - len(duplicates),
            len(duplicates),
        )


async def test_same_nmi_twice_is_sent_in_order(tmp_path: Path) -> None:
    """Two versions of one NMI in one file: created, then updated; the register ends with
    the second."""
    async with asyncio.timeout(30):
        path = BAD / "same-nmi-twice.jsonl"
        async with Simulator(sim_settings()) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [path])
            versions = [unstamped(v.record) for v in sim.store.history("8001000001")]
        found = assert_each_once(result.out_dir, [(str(path), n, None) for n in (1, 2, 3)])
        actions = {line["source"]["line"]: line["action"] for line in found["accepted"]}
        assert actions == {1: "create", 2: "create", 3: "update"}
        assert versions == [
            {"nmi": "8001000001", "jobNumber": "FIRST"},
            {"nmi": "8001000001", "jobNumber": "SECOND"},
        ]


@pytest.mark.parametrize("problem", ["directory", "missing", "one of several missing"])
async def test_a_path_that_cannot_be_read_is_a_usage_error(tmp_path: Path, problem: str) -> None:
    """A directory or a missing file: exit 2 with a message naming it, no traceback, nothing
    sent, no outcome directory."""
    async with asyncio.timeout(30):
        good_file = write_jsonl(tmp_path / "good.jsonl", [{"nmi": "8001000001"}])
        culprit = {
            "directory": BAD,
            "missing": tmp_path / "missing.jsonl",
            "one of several missing": tmp_path / "nope.jsonl",
        }[problem]
        inputs = [str(good_file), str(culprit)] if problem.startswith("one") else [str(culprit)]
        out = tmp_path / "out"
        async with Simulator(sim_settings()) as sim:
            args = ["submit", *inputs, "--out", str(out), *endpoint_flags(sim, tmp_path)]
            done = await run_cli(args, tmp_path)
            stats = sim.stats()
        assert done.code == 2, done.stderr
        what = "input path is a directory" if problem == "directory" else "input file not found"
        assert f"wem-der: {what}" in done.stderr
        assert str(culprit) in done.stderr
        assert "Traceback" not in done.stderr
        assert stats["tokens_issued"] == stats["der_requests_received"] == 0
        assert not out.exists()
