"""The simulator's state, shared by every handler through the application.

One `SimState` per running simulator holds the components (store, quota, tokens, faults,
rules, body schema), the injected clock and sleep, the counters behind `GET /_sim/stats`
and the log of recent arrivals behind `GET /_sim/arrivals`: counters say how many requests
a run sent, the log says when, which is what a test of a client riding out an outage reads
(how many requests a second reached the register while it was down).
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from wem_der.simulator.faults import FaultInjector
from wem_der.simulator.quota import SlidingWindowQuota
from wem_der.simulator.rules import RuleTable
from wem_der.simulator.schema import BodySchema
from wem_der.simulator.settings import SimulatorSettings
from wem_der.simulator.store import Store
from wem_der.simulator.tokens import TokenIssuer

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# The arrival log keeps the latest requests only, so that a simulator serving a long run
# stays small (about 9 MB when full); a test reads it long before it wraps.
ARRIVALS_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request to the OAuth or a DER API, as the simulator answered it."""

    at_s: float  # seconds since the simulator started, on its clock, as a profile's times
    endpoint: str  # the route's name ("installation.create"), or "unmatched"
    status: str  # the status answered, or "dropped" for a connection closed unanswered


@dataclass
class Stats:
    """Counters kept on the request path; plain ints so counting stays cheap."""

    # (endpoint, status) -> count; status is "dropped" for a connection closed unanswered.
    by_endpoint: Counter[tuple[str, str]] = field(default_factory=Counter)
    http_429: int = 0
    throttled_by_fault: int = 0
    creates_refused_existing: int = 0
    # Creates applied to an NMI that already had an installation. Stays 0 while the
    # `installation_exists` rule is on; a client test that switches the rule off (a lax
    # register) reads it to prove it never sends a create twice.
    duplicate_creates: int = 0
    dropped: int = 0
    applied_then_dropped: int = 0
    # Requests met by an outage window: answered 503, or closed unanswered (also `dropped`).
    outage_503: int = 0
    outage_dropped: int = 0
    arrivals: deque[Arrival] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))


@dataclass
class SimState:
    """Everything a handler reaches through `request.app[STATE]`."""

    settings: SimulatorSettings
    clock: Clock
    sleep: Sleep
    store: Store
    quota: SlidingWindowQuota
    tokens: TokenIssuer
    faults: FaultInjector
    rules: RuleTable
    schema: BodySchema
    started_at: float
    stats: Stats = field(default_factory=Stats)

    @classmethod
    def build(
        cls, settings: SimulatorSettings, *, clock: Clock, sleep: Sleep, store: Store
    ) -> SimState:
        """Wire the components from `settings`; the server starts now on `clock`."""
        started_at = clock()
        profile = settings.faults
        return cls(
            settings=settings,
            clock=clock,
            sleep=sleep,
            store=store,
            quota=SlidingWindowQuota(
                settings.quota_count,
                settings.quota_period_s,
                counts_refused=settings.quota_counts_refused,
            ),
            tokens=TokenIssuer(
                settings.token_lifetime_s,
                revoke_at=[started_at + t for t in profile.revoke_tokens_at_s],
            ),
            faults=FaultInjector(profile, seed=settings.seed, started_at=started_at),
            rules=RuleTable.from_file(settings.rules_file),
            schema=BodySchema.from_file(settings.schema_file),
            started_at=started_at,
        )

    def answered(self, endpoint: str, status: str, arrived: float) -> None:
        """Count one request to `endpoint` that arrived at `arrived` (on the clock) and was
        answered `status` ("dropped": closed unanswered), and log its arrival."""
        # Interned, so that the log holds one string per status rather than one per request.
        status = sys.intern(status)
        self.stats.by_endpoint[(endpoint, status)] += 1
        self.stats.arrivals.append(Arrival(arrived - self.started_at, endpoint, status))

    def snapshot(self) -> dict[str, Any]:
        """The body of `GET /_sim/stats` (without its transaction id)."""
        requests: dict[str, dict[str, int]] = {}
        for (endpoint, status), count in sorted(self.stats.by_endpoint.items()):
            requests.setdefault(endpoint, {})[status] = count
        stats = self.stats
        return {
            "requests": requests,
            "der_requests_received": self.quota.received_total,
            "max_requests_in_window": self.quota.max_in_window,
            "quota": {"count": self.quota.count, "period_s": self.quota.period_s},
            "quota_refused": self.quota.refused_total,
            "http_429": stats.http_429,
            "throttled_by_fault": stats.throttled_by_fault,
            "creates_refused_existing": stats.creates_refused_existing,
            "duplicate_creates": stats.duplicate_creates,
            "dropped": stats.dropped,
            "applied_then_dropped": stats.applied_then_dropped,
            "outage_503": stats.outage_503,
            "outage_dropped": stats.outage_dropped,
            "tokens_issued": self.tokens.issued_total,
            **self.store.counts(),
        }

    def reset(self) -> None:
        """Forget records, counters, the arrival log and the quota's history (tokens stay
        valid)."""
        self.store.clear()
        self.quota.reset()
        self.stats = Stats()


STATE = web.AppKey("simulator_state", SimState)
