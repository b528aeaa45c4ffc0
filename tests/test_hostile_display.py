"""Hostile records and answers, as an operator meets them.

`validate` and `submit` judge a record by the one pre-flight, so they agree on every record,
the size of its request body included; every invalid outcome says why; and no value from an
input or from the register reaches a terminal, a log line or problems.csv raw.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.ledger.outcome_files import OutcomeSink
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.samples import installations, nmi_record
from wem_der.records.shapes import RecordKind
from wem_der.report.display import shown
from wem_der.send.body import MAX_BODY_BYTES

from tests import e2e
from tests.processes import Sim, wem_der
from tests.scripted import Reply, serve

BAD = Path(__file__).parent / "data" / "bad"
INSTALLATION, NMI = RecordKind.INSTALLATION, RecordKind.NMI
# What a terminal acts on, or shows as something else: C0 and C1 controls, DEL, a line
# separator, a bidirectional override, a zero-width space, a no-break space, and the
# surrogate that stands for a byte of a file name that is not UTF-8.
UNSAFE = [
    "\n", "\r", "\t", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b",
    "\u2028", "\u202e", "\u200b", "\xa0", "\udcff",
]  # fmt: skip


def only_printable_lines(text: str) -> bool:
    """Whether `text` holds nothing a terminal acts on but its line ends."""
    return all(line.isprintable() for line in text.split("\n"))


# -- the escaping itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["8001000000", "Müller & Söhne", 'a, "b"; =c', "日本語 テキスト", "", "a  b"]
)
def test_plain_text_is_shown_as_it_is(text: str) -> None:
    assert shown(text) == text


@pytest.mark.parametrize("char", UNSAFE)
@pytest.mark.parametrize("template", ["{}", "8001000000{}", "{}[2J", "a{}b"])
def test_text_a_terminal_would_act_on_is_shown_as_repr_shows_it(char: str, template: str) -> None:
    text = template.format(char)
    out = shown(text)
    assert out.isprintable()
    assert ast.literal_eval(out) == text  # quoted and escaped: the exact value reads back


@pytest.mark.parametrize("text", ["8001000000 ", " 8001000000", " "])
def test_a_space_at_either_end_is_shown_quoted(text: str) -> None:
    """`nmi=8001000000 ` would pass for the valid NMI it is not."""
    assert shown(text) == repr(text)


# -- every invalid outcome says why -----------------------------------------------------------


def test_an_invalid_outcome_without_an_error_cannot_be_made() -> None:
    source = SourceRef("in.jsonl", line=1)
    with pytest.raises(ValueError, match="at least one error"):
        OutcomeRecord(INSTALLATION, "8001000000", source, Outcome.INVALID, reason="too big")
    error = {"code": "local", "title": "Local validation", "path": "nmi", "detail": "missing"}
    made = OutcomeRecord(INSTALLATION, None, source, Outcome.INVALID, errors=[error])
    assert made.errors == [error]
    # Other outcomes may have no error: a failure without an answer has a reason instead.
    assert OutcomeRecord(INSTALLATION, None, source, Outcome.FAILED).errors == []


# -- validate and submit agree ---------------------------------------------------------------

# A free-text field of each kind, to grow a record to an exact size.
PAD = {INSTALLATION: "comments", NMI: "substation"}


def body_size(kind: RecordKind, record: dict[str, Any]) -> int:
    """The bytes of the request body of `record`: an installation is sent in `data`, an NMI
    record bare (the API's shapes)."""
    return len(orjson.dumps({"data": record} if kind is INSTALLATION else record))


def sized(kind: RecordKind, record: dict[str, Any], size: int) -> dict[str, Any]:
    """`record` with its free-text field padded so that its request body is `size` bytes."""
    padded = record | {PAD[kind]: ""}
    padded[PAD[kind]] = "x" * (size - body_size(kind, padded))
    assert body_size(kind, padded) == size
    return padded


def sample(kind: RecordKind, i: int) -> dict[str, Any]:
    if kind is INSTALLATION:
        return next(installations(1, start=i))
    return nmi_record(i)


def hostile_lines(nmi: str) -> list[bytes]:
    """Lines that are JSON at the edge of what a reader or a validator takes."""
    head = b'{"nmi":"' + nmi.encode() + b'"'
    numbers = [
        b"123456789012345678901234567890", b"18446744073709551615", b"18446744073709551616",
        b"-9223372036854775809", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0.0",
        b"1e308", b"1.0", b"1E2", b"true",
    ]  # fmt: skip
    return [
        *(head + b',"loadCapacity":' + number + b"}" for number in numbers),
        *(head + b',"availablePhasesCount":' + number + b"}" for number in numbers),
        head + b',"comments":' + b"[" * 300 + b"]" * 300 + b"}",
        head + b',"deep":' + b'{"x":' * 300 + b"1" + b"}" * 300 + b"}",
        b"[" * 2000 + b"]" * 2000,
        b"[]", b'"text"', b"null", b"42", b"true", b"[" + head + b"}]",
        head + b',"nmi":"8001000999"}',
        b'{"data":{"data":' + head + b"}}}",
        b'{"data":' + head + b'},"extra":1}',
        b'{"data":[]}', b'{"data":null}', b'{"data":' + head + b"}}",
        head + b',"comments":"a\\u0000b"}',
        head + b',"comments":"\\ud800"}',
        head + b',"comments":"\xff\xfe"}',
        head + b',"substation":"' + b"s" * 5000 + b'"}',
    ]  # fmt: skip


def validate_verdicts(done: e2e.Done) -> dict[str, list[str]]:
    """What `validate` printed: each invalid record's source, with its lines of errors."""
    *lines, last = done.stdout.splitlines()
    found: dict[str, list[str]] = {}
    for line in lines:
        where, rest = line.split("  nmi=", 1)
        found.setdefault(where, []).append(rest)
    assert last.endswith(f" {len(found)} invalid"), done.stdout[-500:]
    return found


def submit_verdicts(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The invalid outcomes of a run: each record's source, with its errors."""
    found = {}
    for line in (out_dir / "invalid.jsonl").read_bytes().splitlines():
        outcome = orjson.loads(line)
        source = outcome["source"]
        where = str(SourceRef(source["path"], source.get("line"), source.get("index")))
        found[where] = outcome["errors"]
    return found


def assert_they_agree(sim: Sim, tmp_path: Path, paths: list[Path], *flags: str) -> set[str]:
    """validate and submit of `paths` refuse the same records, each with a reason; the
    records refused."""
    names = [str(path) for path in paths]
    checked = wem_der("validate", *names, *flags)
    assert checked.code in (0, 1), checked.output
    out = tmp_path / "out"
    sent = wem_der("submit", *names, "--out", str(out), *flags, *sim.flags(tmp_path / "state"))
    assert sent.code in (0, 1), sent.output
    said, refused = validate_verdicts(checked), submit_verdicts(out)
    assert sorted(said) == sorted(refused)
    assert checked.code == (1 if refused else 0)
    for where, errors in refused.items():
        assert errors, f"{where}: invalid with no error"
        assert all(error["detail"] for error in errors), where
        assert len(said[where]) == len(errors), where
    return set(refused)


@pytest.mark.parametrize("kind", [INSTALLATION, NMI])
@pytest.mark.parametrize("flags", [[], ["--allow-unknown-fields"]])
def test_validate_and_submit_agree_at_the_size_limit_and_on_hostile_json(
    register: Sim, tmp_path: Path, kind: RecordKind, flags: list[str]
) -> None:
    """A body one byte over AEMO's limit is refused by both, with its size; one at the limit
    passes both, given bare or wrapped in `data`; each hostile line has one verdict."""
    at_limit = sized(kind, sample(kind, 1), MAX_BODY_BYTES)
    over = sized(kind, sample(kind, 2), MAX_BODY_BYTES + 1)
    path = tmp_path / "in.jsonl"
    lines = [
        orjson.dumps(at_limit),
        orjson.dumps(over),
        orjson.dumps({"data": over}),
        # For an NMI record the wrapper is not sent: this line is over, its body is not.
        orjson.dumps({"data": sized(kind, sample(kind, 3), MAX_BODY_BYTES)}),
        orjson.dumps(sample(kind, 4)),
        *hostile_lines(sample(kind, 5)["nmi"]),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    refused = assert_they_agree(register, tmp_path, [path], "--kind", kind.value, *flags)
    assert {f"{path}:1", f"{path}:4", f"{path}:5"}.isdisjoint(refused)
    assert {f"{path}:2", f"{path}:3"} <= refused
    for n in (2, 3):
        [error] = submit_verdicts(tmp_path / "out")[f"{path}:{n}"]
        assert error["detail"].startswith(f"request body is {MAX_BODY_BYTES + 1} bytes")


def test_validate_and_submit_agree_on_every_file_of_the_bad_corpus(
    register: Sim, tmp_path: Path
) -> None:
    refused = assert_they_agree(register, tmp_path, sorted(BAD.iterdir()))
    assert len(refused) >= 30  # the corpus is mostly refusals: the comparison compared some


# -- nothing reaches a terminal or a CSV raw --------------------------------------------------


def test_validate_shows_hostile_values_escaped(tmp_path: Path) -> None:
    """A newline in an NMI cannot pass it off as a valid NMI refused on the next line, and
    escape sequences in values and field names reach the terminal as text."""
    record = next(installations(1))
    hostile = [
        record | {"nmi": "8001000000\n8001000001"},
        record | {"nmi": "\x1b[2J\x1b[Hcleared"},
        record | {"islandableInstallation": "No\x1b[31m"},
        record | {"bogus\x1b]0;title\x07": 1},
        record | {"nmi": "8001000000 "},
        record | {"nmi": "\u202e0000001008"},
    ]
    path = e2e.write_jsonl(tmp_path / "in.jsonl", hostile)
    done = wem_der("validate", str(path))
    assert done.code == 1, done.output
    assert only_printable_lines(done.stdout + done.stderr)
    lines = done.stdout.splitlines()
    assert len(lines) == len(hostile) + 1  # one error each, and the count
    assert f"{path}:1  nmi='8001000000\\n8001000001'  nmi: expected an NMI" in lines[0]
    assert "nmi='\\x1b[2J\\x1b[Hcleared'" in lines[1]
    assert "islandableInstallation: 'No\\x1b[31m' is not one of" in lines[2]
    assert "'bogus\\x1b]0;title\\x07': unknown field" in lines[3]
    assert "nmi='8001000000 '" in lines[4]
    assert "nmi='\\u202e0000001008'" in lines[5]


def test_a_file_name_that_holds_escapes_reaches_the_terminal_as_text(tmp_path: Path) -> None:
    path = tmp_path / "in\x1b]0;pwned\x07\nx.jsonl"
    e2e.write_jsonl(path, [{"nmi": "bad"}])
    done = wem_der("validate", str(path))
    assert done.code == 1, done.output
    assert only_printable_lines(done.stdout + done.stderr)
    assert len(done.stdout.splitlines()) == 2
    missing = wem_der("validate", str(tmp_path / "gone\x1b[2J.jsonl"))
    assert missing.code == 2
    assert only_printable_lines(missing.stdout + missing.stderr)
    assert "gone\\x1b[2J.jsonl" in missing.stderr


@pytest.mark.parametrize(
    "text",
    ["\x1b[2J", "a\nb", "\t=1", "\r=1", "\n=1", " =1", "=1 ", "x\u202e", "\x9b31m", "=1\x00"],
)
def test_problems_csv_shows_hostile_cells_escaped(tmp_path: Path, text: str) -> None:
    """Each cell as `repr` shows it: `cat problems.csv` prints it as text, a spreadsheet
    reads it as text (it starts with a quote), and the value reads back exactly."""
    rejected = OutcomeRecord(
        INSTALLATION,
        text,
        SourceRef(text, line=1),
        Outcome.REJECTED,
        errors=[{"code": text, "title": text, "detail": text}],
    )
    with OutcomeSink(tmp_path) as sink:
        sink.write(rejected)
    raw = (tmp_path / "problems.csv").read_text(encoding="utf-8")
    assert only_printable_lines(raw.replace("\r\n", "\n"))
    [row] = e2e.read_problems(tmp_path)
    for column in ("nmi", "code", "title", "detail"):
        assert ast.literal_eval(row[column]) == text, column


@pytest.mark.parametrize("text", ["\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20SUM(A1)"])
def test_full_width_formula_signs_are_defused_too(tmp_path: Path, text: str) -> None:
    record = OutcomeRecord(
        INSTALLATION,
        "8001000000",
        SourceRef("in.jsonl", line=1),
        Outcome.REJECTED,
        errors=[{"code": text, "title": text, "detail": text}],
    )
    with OutcomeSink(tmp_path) as sink:
        sink.write(record)
    [row] = e2e.read_problems(tmp_path)
    assert (row["code"], row["title"], row["detail"]) == ("'" + text,) * 3


async def test_answers_and_values_are_escaped_in_logs_the_closing_table_csv_and_report(
    tmp_path: Path,
) -> None:
    """The register's answer and the input's NMIs hold escape sequences: the console log,
    the closing table, problems.csv and `wem-der report` show them as text."""
    rejection = {
        "code": "=1+2\x1b[5m",
        "title": "\x1b[2JBad\nvalue",
        "detail": "@SUM(A1)\x1b]0;pwned\x07",
    }
    stop = {"code": "405", "title": "\x1b[31mMethod\nNot Allowed", "detail": "\u202eevil"}
    good = list(installations(3))
    path = e2e.write_jsonl(tmp_path / "in.jsonl", [{"nmi": "\x1b[2Jgone"}, *good])
    (tmp_path / "secret.txt").write_text(e2e.SECRET + "\n", encoding="utf-8")
    async with asyncio.timeout(60), serve() as server:
        server.script(
            Reply(200, e2e.TOKEN_BODY),
            Reply(422, {"transactionId": "txn-1", "errors": [rejection]}),
            Reply(405, {"transactionId": "txn-2", "errors": [stop]}),
        )
        args = [
            "submit", str(path), "--out", str(tmp_path / "out"),
            "--token-url", server.url + "/oauth/token",
            "--base-url", server.url + "/der",
            "--nmi-base-url", server.url + "/der",
            "--client-id", e2e.CLIENT_ID,
            "--client-secret-file", str(tmp_path / "secret.txt"),
            "--participant-id", e2e.PARTICIPANT,
            "--state-dir", str(tmp_path / "state"),
            "--concurrency", "1", "--no-progress", "--log-format", "console",
            # The script answers writes: the ledger alone plans, with no search first.
            "--plan", "ledger",
        ]  # fmt: skip
        done = await e2e.wem_der(args, tmp_path)
    assert done.code == 3, done.stderr
    assert only_printable_lines(done.stdout + done.stderr)
    # The console log line of the invalid record, and the stop in the closing table.
    assert "nmi='\\x1b[2Jgone'" in done.stderr
    assert "\\x1b[31mMethod\\nNot Allowed: \\u202eevil" in done.stdout

    [row] = e2e.read_problems(tmp_path / "out")
    for column in ("code", "title", "detail"):
        assert ast.literal_eval(row[column]) == rejection[column]
    raw = (tmp_path / "out" / "problems.csv").read_text(encoding="utf-8")
    assert only_printable_lines(raw.replace("\r\n", "\n"))

    state = ["--state-dir", str(tmp_path / "state")]
    report = await e2e.wem_der(["report", str(tmp_path / "out"), *state], tmp_path)
    assert report.code == 0, report.stderr
    assert only_printable_lines(report.stdout + report.stderr)
    assert shown(rejection["title"]) in report.stdout
    assert "\\x1b[31mMethod\\nNot Allowed" in report.stdout
    history = await e2e.wem_der(["report", "--nmi", "\x1b[2Jgone", *state], tmp_path)
    assert history.code == 0, history.stderr
    assert only_printable_lines(history.stdout + history.stderr)
    assert "NMI '\\x1b[2Jgone'" in history.stdout
