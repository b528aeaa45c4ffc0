"""Reading the register in bulk through AEMO's search, `GET /installation?...`.

    NMIs    --lookup(), batches of up to batch_size--> one search each --> Lookup: NMI -> Held
    filters --matching()--> page 1, 2, ... until a page comes back short --> Held, Held, ...

The search returns the current versions, in full, of the installations it selects: the
NMIs of a comma-separated `nmi`, or those that the filters match; it needs at least one of
them, and pages of 25, 50 or 100 (docs/aemo-contract.md, "Search"). Its documented answer
is a bare JSON list [spec]; the envelope `{"transactionId", "data": [...], "page", ...}`
is our guess, and both are read. Neither a page count nor a total is relied on, since
the definitions document none: a page shorter than `page_size` is the last. A search by
NMI also ends once every NMI asked for is found (the register holds one installation per
NMI), so a batch of `page_size` NMIs that are all held costs one request, not two.

Every request is one attempt granted by the run's quota and token (send/attempt.py), and
429s, 5xx, timeouts and dropped connections are retried within a `RetryPolicy` budget per
request, as a write's are (send/retry.py). Expected refusals are values: a `Lookup` whose
`error` says why its NMIs could not be read. A misconfigured client raises `Misconfigured`;
`matching`, whose caller cannot go on without every page, raises `SearchFailed`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import structlog

from wem_der.errors import Misconfigured, SearchFailed
from wem_der.records.shapes import RecordKind
from wem_der.send.answers import Counters, KnownRefusal, quoted_error, transaction_id
from wem_der.send.attempt import Attempts
from wem_der.send.body import ApiAnswer
from wem_der.send.retry import RETRYABLE_EXCEPTIONS, Verdict, classify
from wem_der.send.routes import Routes

# The installation stages the search can select; every installation is in one [spec].
STAGES = ("Confirmed", "Conditional")
PAGE_SIZES = (25, 50, 100)

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Filters:
    """The search's filters other than `nmi`; dates as yyyy-mm-dd. None: not filtered on."""

    installation_stage: str | None = None
    equipment_type: str | None = None
    device_type: str | None = None
    from_commissioning_date: str | None = None
    to_commissioning_date: str | None = None

    def query(self) -> dict[str, str]:
        """The query parameters of the filters given, named as the API names them."""
        named = {
            "installationStage": self.installation_stage,
            "equipmentType": self.equipment_type,
            "deviceType": self.device_type,
            "fromCommissioningDate": self.from_commissioning_date,
            "toCommissioningDate": self.to_commissioning_date,
        }
        return {name: value for name, value in named.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Held:
    """The current version of one installation, as a search read it.

    `transaction_id` is the search answer's, when it carries one; `read_at` when the
    answer arrived.
    """

    record: dict[str, Any]
    transaction_id: str | None
    read_at: datetime

    @property
    def nmi(self) -> str:
        return str(self.record["nmi"])


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a search for `nmis` found: the installations held, by NMI, and no others.

    With `error` the search failed for good (its retry budget spent, or refused): what its
    NMIs hold is unknown, which is not the same as absent.
    """

    nmis: tuple[str, ...]
    held: dict[str, Held] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Page:
    records: list[dict[str, Any]]
    transaction_id: str | None
    read_at: datetime


class RegisterReader:
    """Reads the register's current installations in bulk; safe to share between tasks.

    `batch_size` NMIs go in one search (AEMO publishes no limit on the list, and a URL of
    100 NMIs is about 1.1 kB); `page_size` is one of 25, 50 and 100.
    """

    def __init__(
        self,
        *,
        attempts: Attempts,
        routes: Routes,
        record_missing: KnownRefusal,
        batch_size: int = 100,
        page_size: int = 100,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if page_size not in PAGE_SIZES:
            raise ValueError(f"page_size must be one of 25, 50 and 100, not {page_size}")
        self.batch_size = batch_size
        self.page_size = page_size
        # The run's own attempts: a read takes the quota, token, breaker and counters that
        # a write takes.
        self._attempts = attempts
        self._url = routes.collection(RecordKind.INSTALLATION)
        self._record_missing = record_missing
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._sleep = sleep

    @property
    def counters(self) -> Counters:
        """Every request this reader made, by status."""
        return self._attempts.counters

    async def lookup(self, nmis: Sequence[str], filters: Filters | None = None) -> Lookup:
        """The current versions of `nmis` (at most `batch_size` of them) that `filters`, if
        given, also select; one search, paged only while a full page leaves some unfound."""
        asked = tuple(dict.fromkeys(nmis))
        if len(asked) > self.batch_size:
            raise ValueError(f"{len(asked)} NMIs in one search; at most {self.batch_size}")
        bad = [nmi for nmi in asked if "," in nmi or not nmi]
        if bad:
            raise ValueError(f"an NMI in a search cannot be empty or hold a comma: {bad[0]!r}")
        if not asked:
            return Lookup(())
        wanted = set(asked)
        held: dict[str, Held] = {}
        params = {"nmi": ",".join(asked), **(filters or Filters()).query()}
        page, last = 1, None
        while True:
            found = await self._get(params, page, last)
            if isinstance(found, str):
                return Lookup(asked, error=found)
            for record in found.records:
                nmi = record["nmi"]
                # A record read again on a later page (it moved while paging) is newer.
                if nmi in wanted:
                    held[nmi] = Held(record, found.transaction_id, found.read_at)
            if len(found.records) < self.page_size or len(held) == len(wanted):
                return Lookup(asked, held)
            page, last = page + 1, found

    async def matching(self, filters: Filters) -> AsyncIterator[Held]:
        """Every installation that `filters` select, page by page as they are read.

        A record that moves between pages while they are read (a change elsewhere moves it
        up or down the order) can come twice, or not at all: the caller that needs each NMI
        once keeps the ones it has seen. Raises `SearchFailed` if a page cannot be read.
        """
        params = filters.query()
        if not params:
            raise ValueError("the search needs at least one filter (the API requires one)")
        page, last = 1, None
        while True:
            found = await self._get(params, page, last)
            if isinstance(found, str):
                raise SearchFailed(
                    f"the register's search ({_shown(params)}) failed on page {page}: {found};"
                    " run it again later"
                )
            for record in found.records:
                yield Held(record, found.transaction_id, found.read_at)
            if len(found.records) < self.page_size:
                return
            page, last = page + 1, found

    async def _get(self, params: dict[str, str], page: int, previous: _Page | None) -> _Page | str:
        """One page: the records, or why it could not be read (after retries)."""
        query = {**params, "page": str(page), "pageSize": str(self.page_size)}
        # Commas stay as they are, the list's separators; anything else is escaped as %XX.
        url = f"{self._url}?{urlencode(query, safe=',', quote_via=quote)}"
        found = await self._get_url(url, params, page, previous)
        # One line per page read: what was asked (NMIs by their count), what came back.
        if isinstance(found, str):
            log.warning("register.search_failed", search=_shown(params), page=page, reason=found)
        else:
            log.info(
                "register.searched",
                search=_shown(params),
                page=page,
                records=len(found.records),
                transaction_id=found.transaction_id,
            )
        return found

    async def _get_url(
        self, url: str, params: dict[str, str], page: int, previous: _Page | None
    ) -> _Page | str:
        """The page at `url`, retried within the policy's budget; or why it could not be."""
        budget = self._attempts.budget()
        replayed = False
        while True:
            retry_after: float | None = None
            try:
                answer, token = await self._attempts.send("GET", url, None)
            except RETRYABLE_EXCEPTIONS as exc:
                reason = f"no answer: {type(exc).__name__} {exc}".strip()
            else:
                verdict = classify(answer.status)
                if verdict is Verdict.DONE:
                    return self._page(answer, params, page, previous)
                if verdict is Verdict.REFRESH_TOKEN:
                    if replayed:
                        return "401 again after a token refresh"
                    replayed = True
                    self.counters.token_replays += 1
                    self._attempts.tokens.invalidate(token)
                    continue
                replayed = False
                if verdict is Verdict.RETRY:
                    retry_after = (
                        self._attempts.throttled(answer)
                        if answer.status == 429
                        else self._attempts.retry_after(answer)
                    )
                    reason = f"HTTP {answer.status}"
                elif answer.status == 404 and self._record_missing(answer):
                    # The search's documented 404 is "ID not found" [spec]: none held.
                    return _Page([], transaction_id(answer), datetime.now(UTC))
                elif verdict is Verdict.STOP_RUN or answer.status == 404:
                    raise Misconfigured(
                        f"HTTP {answer.status}{quoted_error(answer)} from the register's search at"
                        f" {self._url}: check --base-url (or the profile's"
                        ' record_missing_pattern, if the register words "none found" otherwise)'
                    )
                else:
                    return f"HTTP {answer.status}{quoted_error(answer)}"
            delay = self._attempts.next_delay(budget, self._rng, retry_after)
            if delay is None:
                return f"retry budget spent; last: {reason}"
            await self._sleep(delay)

    def _page(
        self, answer: ApiAnswer, params: dict[str, str], page: int, previous: _Page | None
    ) -> _Page:
        """The records of a 2xx, which must be the register's: a list of installations."""
        data = answer.data
        if data is None and answer.json_object:
            data = []  # an envelope that holds no records
        if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("nmi"), str) for item in data
        ):
            excerpt = repr(answer.raw_excerpt[:80]) if answer.raw_excerpt else "no list of records"
            raise Misconfigured(
                f"HTTP {answer.status} with {excerpt} for the register's search at {self._url}:"
                " not a list of installations; check --base-url and any proxy"
            )
        if (
            previous is not None
            and len(data) >= self.page_size
            and [r["nmi"] for r in data] == [r["nmi"] for r in previous.records]
        ):
            # Asked for the next page, given the same full one again: paging would not end.
            raise Misconfigured(
                f"the register's search ({_shown(params)}) answered page {page} with the"
                f" records of page {page - 1}: it does not page as its operation definition"
                " says (page, pageSize); check --base-url"
            )
        return _Page(data, transaction_id(answer), datetime.now(UTC))


def _shown(params: dict[str, str]) -> str:
    """The filters of a search, for messages; a list of NMIs by its length only."""
    return ", ".join(
        f"{len(value.split(','))} NMIs" if name == "nmi" else f"{name}={value}"
        for name, value in params.items()
    )
