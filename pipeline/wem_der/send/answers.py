"""What the register's answers mean beyond their status: known refusals, ids, accounting."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wem_der.send.body import ApiAnswer


def status_label(status: int | None) -> str:
    """How a request is counted by its answer (summary.json, metrics): the HTTP status, or
    "no answer" when the connection was dropped or refused or the request timed out."""
    return str(status) if status is not None else "no answer"


@dataclass
class Counters:
    """Request accounting of one run, for the summary."""

    requests: int = 0
    http_429: int = 0
    token_replays: int = 0
    reconciliations: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    # Told of each answer as it is counted (the run's metrics).
    on_answer: Callable[[int | None], None] = lambda status: None

    def saw(self, status: int | None) -> None:
        self.by_status[status_label(status)] += 1
        self.on_answer(status)


@dataclass(frozen=True)
class KnownRefusal:
    """Whether a refusal is one the register gives for a known reason, by its error code or,
    failing that, its title and detail (configuration, not fact): "this NMI already has a
    record" on a create, "no record for this NMI" on an update."""

    statuses: frozenset[int]
    codes: frozenset[str]
    pattern: re.Pattern[str]

    @classmethod
    def already_exists(cls, codes: Sequence[str], pattern: str) -> KnownRefusal:
        """A create refused because the NMI has a record: the statuses an API may use for
        it [guess], then the configured codes or title pattern."""
        return cls(frozenset({400, 409, 422}), frozenset(codes), re.compile(pattern))

    @classmethod
    def record_missing(cls, pattern: str) -> KnownRefusal:
        """An update's 404 for an NMI with no record, as the register words it (AEMO's spec
        example: "ID not found"), not a 404 for a path nobody serves."""
        return cls(frozenset({404}), frozenset(), re.compile(pattern))

    def __call__(self, answer: ApiAnswer) -> bool:
        if answer.status not in self.statuses:
            return False
        for error in answer.errors:
            if str(error.get("code")) in self.codes:
                return True
            text = f"{error.get('title', '')} {error.get('detail', '')}"
            if self.pattern.search(text):
                return True
        return False


def transaction_id(answer: ApiAnswer | None) -> str | None:
    """AEMO's id of a call: the body's, else a header's (no header is documented [guess])."""
    if answer is None:
        return None
    return answer.transaction_id or answer.headers_transaction_id


def first_error(answer: ApiAnswer) -> str:
    """The first error's title and detail, for messages ("" when there is none)."""
    if not answer.errors:
        return ""
    error = answer.errors[0]
    return ": ".join(str(error[k]) for k in ("title", "detail") if error.get(k))


def quoted_error(answer: ApiAnswer) -> str:
    """` (title: detail)` of the answer's first error, to follow a status in a message; ""
    when it has none."""
    said = first_error(answer)
    return f" ({said})" if said else ""
