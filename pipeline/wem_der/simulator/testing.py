"""Helpers for tests that talk to the simulator: a manual clock, a sleep that does not
wait, a valid sample record and a small client that sends AEMO's headers.

Shipped in the package (like `aiohttp.test_utils`) so every module's tests can drive the
simulator the same way, without sleeping on the wall clock.
"""

from __future__ import annotations

import base64
import copy
import gzip
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from wem_der.simulator.server import Simulator
from wem_der.simulator.settings import SimulatorSettings
from wem_der.simulator.state import Clock, Sleep

PARTICIPANT = "SIMTEST"


class ManualClock:
    """A clock that moves only when told: pass it as `clock=` and call `advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingSleep:
    """An async sleep that returns at once, remembering what it was asked to wait."""

    calls: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


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
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    token: bool = True,
) -> AsyncIterator[SimClient]:
    """A running simulator and a client session to it (with a token unless `token=False`)."""
    clock = clock or ManualClock()
    sim = Simulator(settings, clock=clock, sleep=sleep or RecordingSleep())
    async with sim, aiohttp.ClientSession() as session:
        client = SimClient(session, sim)
        if token:
            await client.fetch_token()
        yield client
