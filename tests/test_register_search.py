"""register/search.py: bulk reads of the register, by NMI and by filter, both answer shapes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from wem_der.errors import Misconfigured, SearchFailed
from wem_der.records.samples import installations, nmi
from wem_der.register.search import Filters
from wem_der.send.quota import QuotaLimiter
from wem_der.simulator import Simulator, SimulatorSettings
from wem_der.simulator.testing import prefill
from wem_der.testing import VirtualClock

from tests.e2e import TOKEN_BODY
from tests.register import reading, sim_reader, unstamped
from tests.scripted import Reply, Scripted

RECORDS = list(installations(150))
HELD = RECORDS[:140]  # the register holds these; the last ten are absent


@pytest.fixture(params=["envelope", "list"])
async def holding(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """A simulator holding `HELD`, answering searches with an envelope or a bare list."""
    settings = SimulatorSettings(client_secret=SecretStr("s"), search_answer=request.param)
    clock = VirtualClock()
    async with Simulator(settings, clock=clock, sleep=clock.sleep) as sim:
        prefill(sim.state, HELD)
        yield sim


def searches(sim: Simulator) -> dict[str, int]:
    """The simulator's answers to searches, by status."""
    return dict(sim.stats()["requests"].get("installation.search", {}))


async def test_lookup_finds_what_is_held_and_nothing_else(holding: Simulator) -> None:
    """A batch of NMIs comes back as the current versions of the held ones, in full, with
    the answer's transaction id where it carries one and the time it was read."""
    asked = [nmi(i) for i in range(135, 150)] + [nmi(i) for i in range(5)]
    async with asyncio.timeout(10), sim_reader(holding) as reader:
        before = datetime.now(UTC)
        lookup = await reader.lookup(asked)
        after = datetime.now(UTC)
    assert lookup.error is None
    assert lookup.nmis == tuple(asked)
    expected = {nmi(i) for i in [*range(135, 140), *range(5)]}
    assert set(lookup.held) == expected
    for found, held in lookup.held.items():
        stored = holding.store.installation(found)
        assert stored is not None
        assert held.record == stored.record
        assert unstamped(held.record) == RECORDS[int(found[4:])]
        assert before <= held.read_at <= after
        enveloped = holding.settings.search_answer == "envelope"
        assert (held.transaction_id is not None) is enveloped
    assert searches(holding) == {"200": 1}


async def test_a_full_batch_that_is_all_held_costs_one_request(holding: Simulator) -> None:
    """The register holds one installation per NMI: once all are found there is no next page."""
    async with asyncio.timeout(10), sim_reader(holding) as reader:
        lookup = await reader.lookup([nmi(i) for i in range(100)])
        assert len(lookup.held) == 100
        assert reader.counters.requests == 1
    assert searches(holding) == {"200": 1}


@pytest.mark.parametrize(("count", "requests"), [(60, 3), (55, 3), (50, 3), (49, 2)])
async def test_a_batch_larger_than_a_page_is_paged(
    holding: Simulator, count: int, requests: int
) -> None:
    """Paging goes on while a page comes back full and some NMI is still unfound."""
    asked = [nmi(i) for i in range(140 - count, 140)] + [
        nmi(i) for i in range(140, 140 + 60 - count)
    ]
    async with asyncio.timeout(10), sim_reader(holding, batch_size=60, page_size=25) as reader:
        lookup = await reader.lookup(asked)
        assert set(lookup.held) == {nmi(i) for i in range(140 - count, 140)}
        assert reader.counters.requests == requests


@pytest.mark.parametrize(("held", "requests"), [(60, 3), (50, 3), (49, 2)])
async def test_matching_reads_pages_until_a_short_one(
    holding: Simulator, held: int, requests: int
) -> None:
    """A filter's search reads page after page until one is short, whatever the answer says
    of page counts: a last page that is exactly full costs one more (empty) page."""
    holding.store.clear()
    prefill(holding.state, RECORDS[:held])
    async with asyncio.timeout(10), sim_reader(holding, page_size=25) as reader:
        found = [h.nmi async for h in reader.matching(Filters(installation_stage="Confirmed"))]
        assert reader.counters.requests == requests
    assert found == [nmi(i) for i in range(held)]
    assert searches(holding) == {"200": requests}


async def test_filters_reach_the_register_by_their_names(holding: Simulator) -> None:
    """Each filter is sent as the API names it, and selects what the register selects."""
    filters = Filters(
        equipment_type="Solar PV Inverter",
        device_type="Solar PV",
        from_commissioning_date="2021-01-01",
        to_commissioning_date="2023-12-31",
    )

    def selected(record: dict[str, Any]) -> bool:
        connections = record["acConnections"]
        return (
            any(c["equipmentType"] == "Solar PV Inverter" for c in connections)
            and any(d["type"] == "Solar PV" for c in connections for d in c["devices"])
            and any("2021-01-01" <= c["commissioningDate"] <= "2023-12-31" for c in connections)
        )

    expected = [r["nmi"] for r in HELD if selected(r)]
    assert 0 < len(expected) < len(HELD)
    async with asyncio.timeout(10), sim_reader(holding, page_size=25) as reader:
        assert [h.nmi async for h in reader.matching(filters)] == expected
        conditional = Filters(installation_stage="Conditional")
        assert [h.nmi async for h in reader.matching(conditional)] == []


async def test_every_request_takes_the_quota_once(holding: Simulator) -> None:
    """Reads are granted like writes: one grant of the limiter per request the register sees."""
    limiter = QuotaLimiter(count=6000, period_s=60)
    async with asyncio.timeout(10), sim_reader(holding, page_size=25, limiter=limiter) as reader:
        await reader.lookup([nmi(i) for i in range(100)])
        [h async for h in reader.matching(Filters(installation_stage="Confirmed"))]
        assert limiter.granted == reader.counters.requests == 4 + 6
    assert holding.stats()["der_requests_received"] == 10


async def test_a_search_needs_its_nmis_well_formed_and_a_filter(holding: Simulator) -> None:
    """Misuse is refused before a request: too many NMIs, a comma in one, no filter."""
    async with asyncio.timeout(10), sim_reader(holding, batch_size=2) as reader:
        with pytest.raises(ValueError, match="at most 2"):
            await reader.lookup([nmi(0), nmi(1), nmi(2)])
        with pytest.raises(ValueError, match="comma"):
            await reader.lookup(["8001000000,8001000001"])
        with pytest.raises(ValueError, match="filter"):
            [h async for h in reader.matching(Filters())]
        assert reader.counters.requests == 0


# -- the register's other answers, scripted -------------------------------------------------


def scripted_reader(server: Scripted, **options: Any) -> Any:
    return reading(server.url + "/der", token_url=server.url + "/oauth/token", **options)


def token() -> Reply:
    return Reply(json=TOKEN_BODY)


def found(*nmis: str) -> Reply:
    """A search's answer as the operation definition shows it: a bare list."""
    return Reply(json=[{"nmi": n, "jobNumber": "J"} for n in nmis])


def error(status: int, detail: str) -> Reply:
    return Reply(
        status, json={"transactionId": "t", "errors": [{"code": str(status), "detail": detail}]}
    )


async def test_the_query_is_the_operation_definitions(server: Scripted) -> None:
    """GET {base}/installation with nmi as a comma-separated list, page and pageSize, and
    each filter under its own name; the register's headers as on a write."""
    server.script(token(), found("8001000001"))
    filters = Filters(installation_stage="Confirmed", equipment_type="Battery Storage Inverter")
    async with asyncio.timeout(10), scripted_reader(server, page_size=50) as reader:
        await reader.lookup(["8001000001", "8001000002"], filters)
    search = server.seen[1]
    assert (search.method, search.path) == ("GET", "/der/installation")
    assert search.query == {
        "nmi": "8001000001,8001000002",
        "installationStage": "Confirmed",
        "equipmentType": "Battery Storage Inverter",
        "page": "1",
        "pageSize": "50",
    }
    assert search.headers["Authorization"] == "Bearer scripted-token"
    assert search.headers["X-initiatingParticipantID"] == "TESTNSP"


async def test_throttling_and_failures_are_retried(server: Scripted) -> None:
    """A 503 and a dropped connection are retried, a 429 pauses the quota and lowers it."""
    server.script(token(), Reply(503), Reply(drop=True), Reply(429), found("8001000001"))
    limiter = QuotaLimiter(count=100, period_s=1)
    async with (
        asyncio.timeout(10),
        scripted_reader(server, max_attempts=4, limiter=limiter) as reader,
    ):
        lookup = await reader.lookup(["8001000001"])
        assert set(lookup.held) == {"8001000001"}
        assert reader.counters.requests == 4
        assert reader.counters.http_429 == 1
        assert limiter.limit < 100


async def test_a_401_is_replayed_once_with_a_fresh_token(server: Scripted) -> None:
    """A 401 refreshes the token and replays; a second 401 in a row gives the batch up."""
    server.script(token(), Reply(401), token(), found("8001000001"))
    server.script(Reply(401), token(), Reply(401))
    async with asyncio.timeout(10), scripted_reader(server) as reader:
        first = await reader.lookup(["8001000001"])
        second = await reader.lookup(["8001000001"])
        assert reader.counters.token_replays == 2
    assert set(first.held) == {"8001000001"}
    assert first.error is None
    assert second.error == "401 again after a token refresh"
    assert second.held == {}


async def test_id_not_found_means_none_is_held(server: Scripted) -> None:
    """The search's documented 404, "ID not found", is an answer: none of the NMIs is held."""
    server.script(token(), error(404, "ID not found"))
    async with asyncio.timeout(10), scripted_reader(server) as reader:
        lookup = await reader.lookup(["8001000001"])
    assert (lookup.held, lookup.error) == ({}, None)


@pytest.mark.parametrize(
    "reply",
    [
        error(404, "Resource not found: /der/installation"),
        Reply(405),
        Reply(200, body=b"<html>gateway</html>", headers={"Content-Type": "text/html"}),
        Reply(200, json={"nmi": "8001000001"}),
        Reply(200, json=[{"jobNumber": "no NMI"}]),
    ],
    ids=["wrong-url-404", "405", "html", "a-record-not-a-list", "item-without-nmi"],
)
async def test_answers_that_are_not_the_registers_stop(server: Scripted, reply: Reply) -> None:
    """A wrong URL, a misconfigured client or a body that is not a list of installations
    raises, rather than pass for "nothing held"."""
    server.script(token(), reply)
    async with asyncio.timeout(10), scripted_reader(server) as reader:
        with pytest.raises(Misconfigured):
            await reader.lookup(["8001000001"])


async def test_a_refusal_or_a_spent_budget_is_an_error_value(server: Scripted) -> None:
    """A 400 is not retried; 503s until the budget is spent give up; both say why."""
    server.script(token(), error(400, "nmi: bad"), Reply(503), Reply(503))
    async with asyncio.timeout(10), scripted_reader(server, max_attempts=2) as reader:
        refused = await reader.lookup(["8001000001"])
        spent = await reader.lookup(["8001000001"])
        assert reader.counters.requests == 3
    assert refused.error == "HTTP 400 (nmi: bad)"
    assert spent.error == "retry budget spent; last: HTTP 503"


async def test_a_search_that_does_not_page_is_stopped(server: Scripted) -> None:
    """A register that answers page 2 with page 1 would be read for ever: it stops."""
    page = found(*(nmi(i) for i in range(25)))
    server.script(token(), page, page)
    async with asyncio.timeout(10), scripted_reader(server, page_size=25) as reader:
        with pytest.raises(Misconfigured, match="page 2 with the records of page 1"):
            [h async for h in reader.matching(Filters(installation_stage="Confirmed"))]


async def test_a_filter_search_that_fails_raises(server: Scripted) -> None:
    """What reads every page cannot skip one: a page that fails for good raises."""
    server.script(token(), found(*(nmi(i) for i in range(25))), error(400, "no"))
    async with asyncio.timeout(10), scripted_reader(server, page_size=25) as reader:
        read: list[str] = []

        async def read_all() -> None:
            async for held in reader.matching(Filters(installation_stage="Confirmed")):
                read.append(held.nmi)

        with pytest.raises(SearchFailed, match="failed on page 2: HTTP 400"):
            await read_all()
    assert read == [nmi(i) for i in range(25)]


@pytest.mark.parametrize(
    ("page_size", "batch_size", "named"),
    [(30, 100, "page_size"), (0, 100, "page_size"), (100, 0, "batch_size")],
)
async def test_a_reader_takes_the_apis_page_sizes_only(
    page_size: int, batch_size: int, named: str
) -> None:
    """pageSize is 25, 50 or 100, and a batch holds at least one NMI."""
    nowhere = "http://127.0.0.1:9"
    with pytest.raises(ValueError, match=named):
        async with reading(nowhere, token_url=nowhere, page_size=page_size, batch_size=batch_size):
            pass
