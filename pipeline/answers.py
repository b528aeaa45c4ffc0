"""What the register's answers mean beyond their status: "already exists", ids, accounting."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.codec import ApiAnswer


@dataclass
class Counters:
    """Request accounting of one run, for the summary."""

    requests: int = 0
    http_429: int = 0
    token_replays: int = 0
    reconciliations: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def saw(self, status: int | None) -> None:
        self.by_status[str(status) if status is not None else "no answer"] += 1


@dataclass(frozen=True)
class AlreadyExists:
    """Whether a refused create means "this NMI already has a record" (configuration, not fact)."""

    codes: frozenset[str]
    pattern: re.Pattern[str]

    @classmethod
    def from_settings(cls, codes: Sequence[str], pattern: str) -> AlreadyExists:
        return cls(frozenset(codes), re.compile(pattern))

    def __call__(self, answer: ApiAnswer) -> bool:
        if answer.status not in {400, 409, 422}:
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


def first_title(answer: ApiAnswer) -> str:
    """The title of the first error, for messages."""
    return str(answer.errors[0].get("title", "")) if answer.errors else ""
