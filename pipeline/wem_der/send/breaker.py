"""The run's circuit breaker: a register that is down pauses the run instead of failing it.

    closed --an outage failure--> one attempt at a time until an answer (closed again)
           --`opens_after` outage failures in a row, no answer between--> open
    open   --one probe at a time, its waits growing to `probe_cap_s`--> an answer: closed
    open   --for longer than `max_outage_s`--> RegisterDown: the run stops, resumably

An outage failure is what a register that is down gives: a 5xx of the kind that is
retried, a 408, a connection dropped or refused, a timeout (`OUTAGE_STATUSES`,
`RETRYABLE_EXCEPTIONS`). Any other answer, a refusal included, shows the register up
and closes the breaker; a 429 is the quota's business and says nothing either way.
Every request of a run, a write, a read-back or a search, asks `admit` first (send/
attempt.py): while the breaker is open only the probe goes, and the attempts that met the
outage are not charged to any record's budget (`uptime` is the budget's clock). Without
it, each record in flight would spend its own retries on the outage and end `failed`, and
the producer would feed the next ones into the same wall.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from wem_der.errors import RunAborted
from wem_der.send.retry import OUTAGE_STATUSES
from wem_der.send.waiting import sleep_unless

log = structlog.get_logger()

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", re.IGNORECASE)
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "45m" or "3h"."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"duration {text!r} is not a number with an optional unit s, m or h"
            " (for example '3h', '45m' or '600')"
        )
    return float(match[1]) * _UNIT_S[match[2].lower()]


def shown_duration(seconds: float) -> str:
    """`1 h 05 min`, `4 min 10 s`, `40 s`: a duration for a person."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


class RegisterDown(RunAborted):
    """The register did not answer for longer than the run's `--max-outage`."""


@dataclass(slots=True)
class Outage:
    """One time the breaker was open: from `start` to `end` by the breaker's clock (`end`
    None while it lasts), the probes sent meanwhile, and the likely cause when nothing had
    answered since the first request."""

    start: float
    end: float | None
    probes: int = 0
    cause: str | None = None


class Breaker:
    """Opens when the register looks down, and holds every attempt but one probe at a time.

    `diagnose` names the likely cause of a transport failure (send/diagnose.py); it is
    asked when the breaker opens before anything has answered. `clock` must never go
    backwards; `sleep` is the run's, interruptible (a stop raises through `admit`).
    """

    def __init__(
        self,
        *,
        opens_after: int = 3,
        probe_base_s: float = 2.0,
        probe_cap_s: float = 60.0,
        max_outage_s: float = 3 * 3600.0,
        diagnose: Callable[[BaseException], str | None] = lambda exc: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if opens_after < 1:
            raise ValueError(f"opens_after must be at least 1, not {opens_after}")
        self._opens_after = opens_after
        self._probe_base_s = probe_base_s
        self._probe_cap_s = probe_cap_s
        self._max_outage_s = max_outage_s
        self._diagnose = diagnose
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        # The wall clock at the breaker's clock's zero: the outages' instants in
        # summary.json are wall-clock time, and virtual time in tests maps onto it.
        self._epoch = time.time() - clock()
        self._streak = 0  # outage failures in a row, with no answer between
        self._answered = False  # whether anything has answered since the first request
        self._probing = False  # the probe is on its way
        self._probe_failures = 0
        self._next_probe_at = 0.0
        self._down_s = 0.0  # the length of the outages that have ended
        self._changed = asyncio.Event()  # set, and replaced, when the breaker closes or reschedules
        self.outages: list[Outage] = []

    @property
    def is_open(self) -> bool:
        return bool(self.outages) and self.outages[-1].end is None

    @property
    def holding(self) -> bool:
        """Whether attempts go one at a time: while open, or after an outage failure with
        no answer since."""
        return self._streak > 0 or self.is_open

    def uptime(self) -> float:
        """The breaker's clock less every outage: a record's budget runs by it, so that
        waiting out an outage costs no record its retries."""
        now = self._clock()
        return now - self.down_s(now)

    def down_s(self, now: float | None = None) -> float:
        """The time the register has been down in this run, the current outage included."""
        now = self._clock() if now is None else now
        current = self.outages[-1] if self.is_open else None
        return self._down_s + (0.0 if current is None else now - current.start)

    def wall(self, at: float) -> datetime:
        """An instant of the breaker's clock as wall-clock time, in UTC."""
        return datetime.fromtimestamp(self._epoch + at, UTC)

    def status(self) -> str | None:
        """What a person watching the run is told while the register is down, else None."""
        if not self.is_open:
            return None
        now, outage = self._clock(), self.outages[-1]
        since = self.wall(outage.start).astimezone().strftime("%H:%M:%S")
        if self._probing:
            nxt = "probing now"
        else:
            nxt = f"next probe in {shown_duration(self._next_probe_at - now)}"
        cause = f" ({outage.cause})" if outage.cause else ""
        return f"register unavailable since {since}; {nxt}{cause}"

    async def admit(self) -> bool:
        """Wait until an attempt may go: at once while all is well; one at a time, with
        no wait, after an outage failure with no answer since (the register may be going
        down: it then meets the few failures that open the breaker, not every request
        the quota lets go together); and while open, when the probe is due and none is
        on its way. True: this attempt goes alone, and the breaker must be told its
        answer (`answered`, `failed`) or its end (`release`)."""
        while True:
            if not self.is_open:
                if self._streak == 0:
                    return False
                if not self._probing:
                    self._probing = True
                    return True
                await sleep_unless(self._changed, self._sleep, self._probe_cap_s)
                continue
            now, outage = self._clock(), self.outages[-1]
            give_up_at = outage.start + self._max_outage_s
            if now >= give_up_at:
                raise self._gave_up(now)
            if not self._probing and now >= self._next_probe_at:
                self._probing = True
                outage.probes += 1
                log.info("register.probe", probe=outage.probes)
                return True
            until = give_up_at if self._probing else min(give_up_at, self._next_probe_at)
            await sleep_unless(self._changed, self._sleep, until - now)

    def answered(self, status: int, *, probe: bool, retry_after_s: float | None = None) -> None:
        """An attempt got an HTTP answer with `status`."""
        if status in OUTAGE_STATUSES:
            self.failed(None, probe=probe, retry_after_s=retry_after_s)
        elif status == 429:
            if probe:
                self._reschedule(retry_after_s)
        else:
            self._answered = True
            self._streak = 0
            if self.is_open:
                self._close()
            elif self._probing or probe:
                self._probing = False
                self._notify()

    def failed(
        self, exc: BaseException | None, *, probe: bool, retry_after_s: float | None = None
    ) -> None:
        """An attempt met an outage: `exc` is its transport failure (None: an outage status)."""
        if exc is None:
            self._answered = True
        self._streak += 1
        if self.is_open:
            if probe:
                self._probe_failures += 1
                self._reschedule(retry_after_s)
        elif self._streak >= self._opens_after:
            self._open(exc, retry_after_s)
        elif probe:
            self.release()

    def release(self) -> None:
        """The probe ended without an answer of any kind (its record was stopped): another
        attempt probes in its place."""
        if self._probing:
            self._probing = False
            self._notify()

    def _open(self, exc: BaseException | None, retry_after_s: float | None) -> None:
        now = self._clock()
        cause = None
        if exc is not None and not self._answered:
            cause = self._diagnose(exc)
        self.outages.append(Outage(start=now, end=None, cause=cause))
        self._probe_failures = 0
        self._probing = False
        self._next_probe_at = now + self._probe_wait(retry_after_s)
        self._notify()  # those waiting their turn one at a time now wait for the probe
        log.warning(
            "register.unavailable",
            failures_in_a_row=self._streak,
            first_probe_in_s=round(self._next_probe_at - now, 3),
            max_outage_s=self._max_outage_s,
            likely_cause=cause,
        )

    def _close(self) -> None:
        now, outage = self._clock(), self.outages[-1]
        outage.end = now
        self._down_s += now - outage.start
        self._probing = False
        log.warning(
            "register.available",
            down_s=round(now - outage.start, 3),
            probes=outage.probes,
        )
        self._notify()

    def _reschedule(self, retry_after_s: float | None) -> None:
        self._probing = False
        self._next_probe_at = self._clock() + self._probe_wait(retry_after_s)
        self._notify()

    def _probe_wait(self, retry_after_s: float | None) -> float:
        """The wait before the next probe: doubling from `probe_base_s` to `probe_cap_s`,
        the upper half drawn at random so that the jobs sharing a register do not probe in
        step, and never shorter than a Retry-After."""
        ceiling = min(self._probe_cap_s, self._probe_base_s * 2.0 ** min(self._probe_failures, 64))
        wait = ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
        return max(wait, retry_after_s or 0.0)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _gave_up(self, now: float) -> RegisterDown:
        outage = self.outages[-1]
        since = self.wall(outage.start).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        cause = f"; likely cause: {outage.cause}" if outage.cause else ""
        return RegisterDown(
            f"the register has been unavailable for {shown_duration(now - outage.start)}"
            f" (since {since}, {outage.probes} probes), longer than --max-outage"
            f" {shown_duration(self._max_outage_s)}{cause}; the run stopped, and once the"
            " register is back `wem-der resume` finishes it"
        )

    def listed(self) -> list[dict[str, object]]:
        """The outages as summary.json lists them: `start` and `end` as ISO 8601 UTC,
        `probes`, `still_down` when the run stopped first (its `end` is then the moment
        it stopped), and `cause` when one was diagnosed."""
        listed: list[dict[str, object]] = []
        for outage in self.outages:
            end = self._clock() if outage.end is None else outage.end
            entry: dict[str, object] = {
                "start": self.wall(outage.start).isoformat(),
                "end": self.wall(end).isoformat(),
                "probes": outage.probes,
            }
            if outage.end is None:
                entry["still_down"] = True
            if outage.cause:
                entry["cause"] = outage.cause
            listed.append(entry)
        return listed
