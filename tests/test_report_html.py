"""`wem-der report RUN --format html`: one page with every section, charts that decode,
nothing fetched from elsewhere, every value escaped; tables alone without matplotlib."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from matplotlib.image import imread
from wem_der.errors import ConfigError, OutputError
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.report.collect import collect, render
from wem_der.report.html import INSTALL_CHARTS, to_html, write_page
from wem_der.run.start import LEDGER_FILE
from wem_der.simulator import FaultProfile, Simulator
from wem_der.testing import VirtualClock

from tests.e2e import read_summary, run_settings, sim_settings, submit
from tests.processes import Sim, wem_der

INST = RecordKind.INSTALLATION
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SAMPLES = Path(__file__).parents[1] / "pipeline" / "wem_der" / "data"
SECTIONS = ["run", "quota", "outcomes", "errors", "exceptions", "followup"]
# What a register's answer or an operator's file might hold to take over a page.
SCRIPT = '<script>alert("title")</script>'
IMAGE = "<img src=https://evil.example/x.png onerror=alert(1)>"
BOLD = "<b>Conditional</b>"
TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "section", "p", "code",
    "table", "thead", "tbody", "tr", "th", "td", "img",
}  # fmt: skip


class Page(HTMLParser):
    """What a browser would build from the page: tags, their attributes, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def outcome(seq: int, kind: Outcome, **fields: Any) -> OutcomeRecord:
    return OutcomeRecord(
        kind=INST,
        nmi=f"800100000{seq}",
        source=SourceRef("nightly.jsonl", line=seq + 1),
        outcome=kind,
        action=Action.CREATE,
        content_hash=f"{seq:064d}",
        run_id="night",
        **fields,
    )


async def fill(ledger: Ledger, clock: VirtualClock, out_dir: Path) -> None:
    """Run `night` at 5/10s: a full first period with two 429s, an outage of 30 s with 3
    probes, a record of each outcome, and hostile text in an error title and an exception."""
    await ledger.start_run(
        run_id="night",
        kind="installation",
        out_dir=str(out_dir),
        inputs=["nightly.jsonl"],
        settings={"plan": {}, "settings": {"rate_limit": "5/10s"}},
    )
    answers = {0: 200, 1: 429, 2: 429, 3: 200, 4: 200, 12: 422, 13: 200, 25: None, 40: None}
    answers |= {55: 200, 56: 200}
    for i, (offset, status) in enumerate(answers.items()):
        clock.jump(T0 + offset - clock())
        attempt = await ledger.begin_attempt(
            run_id="night",
            seq=i % 5,
            kind="installation",
            nmi=f"800100000{i % 5}",
            action="create",
            content_hash=f"{i % 5:064d}",
        )
        ledger.finish_attempt(attempt, http_status=status, transaction_id=None)
    clock.jump(T0 + 60 - clock())
    for seq, record in enumerate(
        (
            outcome(0, Outcome.ACCEPTED, http_status=200, transaction_id="T0"),
            outcome(
                1,
                Outcome.REJECTED,
                http_status=422,
                transaction_id="T1",
                errors=[{"code": "1012", "title": SCRIPT}],
            ),
            outcome(
                2,
                Outcome.CONDITIONAL,
                http_status=200,
                transaction_id="T2",
                exceptions=[{"code": "2024", "name": IMAGE}],
            ),
            outcome(3, Outcome.INVALID, errors=[{"code": "local", "title": "nmi: too short"}]),
            outcome(4, Outcome.FAILED, reason="retry budget spent; last: no answer"),
        )
    ):
        ledger.record_outcome("night", seq, record)
    outages = [{"start": "2027-01-15T08:00:20+00:00", "end": "2027-01-15T08:00:50Z", "probes": 3}]
    await ledger.finish_run(
        "night",
        status="finished",
        summary={"requests": 11, "http_429": 2, "elapsed_s": 60.0, "outages": outages},
    )
    await ledger.flush()
    out_dir.mkdir()
    followup = [
        {"nmi": "8001000002", "stage": BOLD, "confirmed": False, "exceptions": [{"code": "2024"}]},
        {"nmi": "8001000009", "stage": "Confirmed", "confirmed": True, "exceptions": []},
    ]
    (out_dir / "followup.jsonl").write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in followup))


@pytest.fixture
async def report(tmp_path: Path) -> dict[str, Any]:
    clock = VirtualClock(start=T0)  # the ledger's wall clock, moved before each write
    async with asyncio.timeout(10), Ledger(tmp_path / "ledger.sqlite3", clock=clock) as ledger:
        await fill(ledger, clock, tmp_path / "out")
        return await collect(ledger, run_id="night", nmi=None, kind=INST)


def png_sizes(page: Page) -> list[tuple[int, int]]:
    """Each image's width and height, decoded from its data: URI."""
    sizes = []
    for img in page.all("img"):
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        pixels = imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        sizes.append((pixels.shape[1], pixels.shape[0]))
    return sizes


def assert_self_contained(page: Page) -> None:
    """Only the page's own kinds of tag, and no attribute that fetches from elsewhere."""
    assert {tag for tag, _ in page.tags} <= TAGS
    for _, attrs in page.tags:
        for name, value in attrs.items():
            if name in {"src", "href"}:
                assert not (value or "").lower().startswith(("http:", "https:", "//")), value


def test_the_page_has_every_section_and_its_charts(report: dict[str, Any]) -> None:
    """Run facts, quota with 429s and the outage, outcomes, codes with an example record,
    the follow-up; two charts that decode as PNG."""
    page = Page(to_html(report))
    assert [attrs["id"] for attrs in page.all("section")] == SECTIONS
    assert_self_contained(page)
    sizes = png_sizes(page)
    assert len(sizes) == 2
    assert all(width == 1000 for width, _ in sizes)  # 10 in at 100 dpi
    alts = [attrs["alt"] for attrs in page.all("img")]
    assert alts == ["write attempts per quota period against the quota", "records by outcome"]
    words = page.words
    assert "11 write attempts, 2 of them answered 429; quota 5 per 10 s" in words
    # The outage, with its duration and probes.
    assert "2027-01-15 08:00:20 2027-01-15 08:00:50 30 3" in words
    # Each code with the first record that had it.
    assert "1 rejected 1012" in words
    assert "NMI 8001000001, nightly.jsonl:2, HTTP 422, transaction T1" in words
    assert "NMI 8001000002, nightly.jsonl:3, HTTP 200, transaction T2" in words
    assert "retry budget spent; last: no answer NMI 8001000004, nightly.jsonl:5" in words
    assert "2 records, 1 Confirmed since the run" in words
    assert "8001000009 Confirmed yes -" in words
    assert INSTALL_CHARTS not in words


def test_every_value_from_the_register_or_a_file_is_escaped(report: dict[str, Any]) -> None:
    """An error title, an exception name and a follow-up stage holding markup show as text:
    no tag of theirs reaches the page."""
    text = to_html(report)
    page = Page(text)
    for hostile in (SCRIPT, IMAGE, BOLD):
        assert hostile not in text
        assert hostile in page.words  # shown as the text it is
    assert not page.all("script")
    assert not page.all("b")
    assert len(page.all("img")) == 2
    assert_self_contained(page)


def test_without_matplotlib_the_page_says_how_to_get_the_charts(report: dict[str, Any]) -> None:
    """With matplotlib not importable, the same tables and a note with the install command."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import orjson; from wem_der.report.html import to_html\n"
        "sys.stdout.write(to_html(orjson.loads(sys.stdin.buffer.read())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=orjson.dumps(report),
        capture_output=True,
        timeout=60,
        check=True,
    )
    page = Page(done.stdout.decode())
    assert [attrs["id"] for attrs in page.all("section")] == SECTIONS
    assert not page.all("img")
    missing = f"Charts need matplotlib, which is not installed here: {INSTALL_CHARTS}"
    assert page.words.count(missing) == 2
    assert "NMI 8001000001, nightly.jsonl:2, HTTP 422, transaction T1" in page.words
    assert_self_contained(page)


def test_the_page_is_written_whole_and_for_its_owner_only(
    report: dict[str, Any], tmp_path: Path
) -> None:
    """Like the outcome files it names NMIs: mode 0o600 whatever the umask; a file that
    cannot be written is an OutputError naming it."""
    page = to_html(report)
    path = tmp_path / "night.html"
    write_page(path, page)
    assert path.read_text(encoding="utf-8") == page
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OutputError, match=r"cannot write the report .*missing/night\.html"):
        write_page(tmp_path / "missing" / "night.html", page)


def test_a_page_shows_one_run_not_an_nmi_history(report: dict[str, Any]) -> None:
    """The page is of a run: an NMI's history alone, or with it, is refused with the way out."""
    with pytest.raises(ConfigError, match="--format html shows one run"):
        to_html(report | {"nmi": {}})
    with pytest.raises(ConfigError, match="--format html shows one run"):
        to_html({"nmi": {}})


async def test_a_real_run_renders_from_its_ledger(tmp_path: Path) -> None:
    """A run against the simulator with 429s: its page, made from its ledger, shows them."""
    faults = FaultProfile(throttle_rate=0.1)
    async with asyncio.timeout(60), Simulator(sim_settings(faults=faults, seed=5)) as sim:
        settings = run_settings(sim, tmp_path)
        result = await submit(settings, tmp_path, [SAMPLES / "sample-with-problems.jsonl"])
    throttled = read_summary(result.out_dir)["http_429"]
    assert throttled > 0
    async with Ledger(settings.state_dir / LEDGER_FILE) as ledger:
        text = await render(ledger, run_id=result.run_id, nmi=None, kind=INST, fmt="html")
    page = Page(text)
    assert [attrs["id"] for attrs in page.all("section")] == SECTIONS
    assert len(png_sizes(page)) == 2
    assert f"{throttled} of them answered 429" in page.words
    assert "None yet: wem-der followup " + result.run_id in page.words
    assert_self_contained(page)


def test_the_report_command_writes_the_page(register: Sim, tmp_path: Path) -> None:
    """`report DIR --format html --out FILE` writes the page owner-only, and prints nothing;
    with --nmi, or where the file cannot be written, exit 2 saying why."""
    state = tmp_path / "state"
    sent = wem_der(
        "submit",
        str(SAMPLES / "sample-with-problems.jsonl"),
        "--out",
        str(tmp_path / "out"),
        *register.flags(state),
    )
    assert sent.code == 1, sent.output
    path = tmp_path / "night.html"
    done = wem_der("report", str(tmp_path / "out"), "--format", "html", "--out", str(path))
    assert done.code == 0, done.output
    assert done.stdout == ""
    page = Page(path.read_text(encoding="utf-8"))
    assert [attrs["id"] for attrs in page.all("section")] == SECTIONS
    assert len(png_sizes(page)) == 2
    assert_self_contained(page)
    assert path.stat().st_mode & 0o777 == 0o600
    nowhere = tmp_path / "missing" / "night.html"
    refused = wem_der("report", str(tmp_path / "out"), "--format", "html", "--out", str(nowhere))
    assert refused.code == 2
    assert f"cannot write the report {nowhere}" in refused.stderr
    nmi = wem_der("report", "--nmi", "8001000900", "--state-dir", str(state), "--format", "html")
    assert nmi.code == 2
    assert "--format html shows one run" in nmi.stderr
