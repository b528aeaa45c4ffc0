"""Helpers for tests that talk to the simulator: a valid sample record, a register filled
without requests (`prefill`) and a small client that sends AEMO's headers.

Shipped in the package (like `aiohttp.test_utils`) so every module's tests can drive the
simulator the same way; its time is a `wem_der.testing.VirtualClock`, so none of them
sleeps on the wall clock.
"""

from __future__ import annotations

import base64
import copy
import gzip
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from wem_der.simulator.installation import apply
from wem_der.simulator.rules import Operation
from wem_der.simulator.server import Simulator
from wem_der.simulator.settings import SimulatorSettings
from wem_der.simulator.state import SimState
from wem_der.testing import VirtualClock

PARTICIPANT = "SIMTEST"


_SAMPLE: dict[str, Any] = {
    "nmi": "6001000001",
    "jobNumber": "JOB-1",
    "approvedCapacity": 10,
    "exportLimitkW": 5,
    "availablePhasesCount": 3,
    "installedPhasesCount": 1,
    "islandableInstallation": "No",
    "acConnections": [
        {
            "nspConnectionId": "C1",
            "commissioningDate": "2024-03-01",
            "equipmentType": "Solar PV Inverter",
            "count": 1,
            "status": "Active",
            "equipmentInjectionCapacity": 5,
            "details": {"manufacturerName": "Good Inverters", "modelNumber": "GI-5000"},
            "devices": [
                {
                    "nspDeviceId": "D1",
                    "type": "Solar PV",
                    "count": 1,
                    "status": "Active",
                    "details": {"nominalRatedCapacity": 5},
                }
            ],
        }
    ],
}


def sample_installation(nmi: str = "6001000001", **fields: Any) -> dict[str, Any]:
    """A valid installation record (a fresh copy), with `fields` replacing top-level keys."""
    record = copy.deepcopy(_SAMPLE)
    record.update(nmi=nmi, **fields)
    return record


def prefill(state: SimState, records: Iterable[dict[str, Any]]) -> int:
    """Store each of `records` as its create (or, for an NMI held already, its update)
    would, without a request: the body's checks (`ApiError` for a record a request could
    not store), the rules, exceptions and server-maintained fields all apply; the quota and
    the request counters do not. Returns how many were stored.

    For tests and benchmarks that need a register holding many records: with a
    `SqliteStore` in `state`, a simulator started later on the same file serves them.
    """
    count = 0
    for record in records:
        nmi = record.get("nmi")
        previous = state.store.installation(nmi) if isinstance(nmi, str) else None
        operation: Operation = "installation.update" if previous else "installation.create"
        # The store owns what it saves, and stamping changes the record in place.
        body = state.schema.check(operation, {"data": copy.deepcopy(record)})
        apply(state, body["data"], operation, previous)
        count += 1
    return count


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # decoded JSON, or None for an empty or non-JSON body


def expect_error(answer: Answer, status: int, code: str) -> dict[str, str]:
    """Assert `answer` is the DER error envelope with one error of `code`; return the error."""
    assert answer.status == status, answer.body
    assert answer.body["transactionId"]
    [error] = answer.body["errors"]
    assert error["code"] == code, error
    return dict(error)


def encode(body: Any, encoding: str = "identity") -> bytes:
    """JSON bytes, compressed as `encoding` (identity, gzip or deflate)."""
    raw = orjson.dumps(body)
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "deflate":
        return zlib.compress(raw)
    return raw


class SimClient:
    """Sends requests to a running simulator with a token and AEMO's required headers."""

    def __init__(self, session: aiohttp.ClientSession, sim: Simulator) -> None:
        self.session = session
        self.sim = sim
        self.token: str | None = None

    def basic(self) -> str:
        """The Basic credentials of the simulator's configured client."""
        secret = self.sim.settings.client_secret
        pair = f"{self.sim.settings.client_id}:{secret.get_secret_value() if secret else 'x'}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def fetch_token(self) -> str:
        """Get a token from the OAuth endpoint and keep it for later calls."""
        answer = await self.send(
            "POST",
            self.sim.token_url + "?grant_type=client_credentials",
            headers={"Authorization": self.basic()},
        )
        assert answer.status == 200, answer.body
        self.token = str(answer.body["acess_token"])
        return self.token

    def headers(self) -> dict[str, str]:
        """Bearer token and the participant and market headers."""
        headers = {"X-initiatingParticipantID": PARTICIPANT, "X-market": "WEM"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request with exactly the given headers; the body is read in full."""
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
            return Answer(resp.status, resp.headers, body)

    async def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        encoding: str = "identity",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """A DER call: token and AEMO headers, the body as JSON with an explicit length."""
        merged = self.headers()
        data = None
        if body is not None:
            data = encode(body, encoding)
            merged["Content-Type"] = "application/json"
            if encoding != "identity":
                merged["Content-Encoding"] = encoding
        merged.update(headers or {})
        return await self.send(method, url, data=data, headers=merged)

    async def create(self, record: dict[str, Any]) -> Answer:
        """POST /installation with `record` wrapped in `data`."""
        return await self.call(
            "POST", self.sim.installation_url + "/installation", {"data": record}
        )

    async def update(self, record: dict[str, Any]) -> Answer:
        """PUT /installation/{nmi} with `record` wrapped in `data`."""
        url = f"{self.sim.installation_url}/installation/{record['nmi']}"
        return await self.call("PUT", url, {"data": record})


@asynccontextmanager
async def connected(
    settings: SimulatorSettings | None = None,
    *,
    clock: VirtualClock | None = None,
    token: bool = True,
) -> AsyncIterator[SimClient]:
    """A running simulator on `clock` (its time and its latency's waits) and a client
    session to it (with a token unless `token=False`)."""
    clock = clock or VirtualClock()
    sim = Simulator(settings, clock=clock, sleep=clock.sleep)
    async with sim, aiohttp.ClientSession() as session:
        client = SimClient(session, sim)
        if token:
            await client.fetch_token()
        yield client
