"""Configuration of the simulator: frozen value objects, loaded once at the edge.

`SimulatorSettings` is what a `Simulator` is built from; `FaultProfile` is the part that
makes it misbehave on purpose. A profile is a flat TOML file whose keys are the fields of
`FaultProfile` (examples ship in `pipeline/wem_der/simulator/data/faults/`). Times in a profile are
seconds since the server started, measured on the clock injected into the simulator, so
tests move through outages and revocations without sleeping.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class FaultProfile(BaseModel):
    """Deliberate misbehaviour, reproducible for a given seed.

    The five rates are exclusive bands of one uniform draw per DER request (throttle, 500,
    503, drop, applied-then-dropped, in that order), so they must add up to at most 1 and a
    given seed yields the same sequence of answers for the same sequence of requests.

    Outage windows are the register being down rather than failing now and then: inside
    one, every DER request (and, with `outages_cover_token`, every token request, as in a
    maintenance window of the whole gateway) is answered 503 (`outages`) or has its
    connection closed unanswered (`dropped_outages`), whatever the draw.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    throttle_rate: float = Field(default=0.0, ge=0, le=1)
    error_rate_500: float = Field(default=0.0, ge=0, le=1)
    error_rate_503: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    applied_then_dropped_rate: float = Field(default=0.0, ge=0, le=1)
    # [start_s, end_s) windows during which every DER request is answered 503.
    outages: tuple[tuple[float, float], ...] = ()
    # [start_s, end_s) windows during which every DER request's connection is closed without
    # an answer, as a gateway that is down or unreachable does.
    dropped_outages: tuple[tuple[float, float], ...] = ()
    # Retry-After (delay-seconds, rounded up) on an outage's 503s; None sends none, as AEMO
    # documents none [doc].
    outage_retry_after_s: float | None = Field(default=None, ge=0)
    # Whether the OAuth token endpoint is down in the windows too (the whole gateway), or
    # only the DER APIs behind it.
    outages_cover_token: bool = False
    # At each time T, every token issued before T stops working.
    revoke_tokens_at_s: tuple[float, ...] = ()
    # AEMO documents no Retry-After on 429 [doc], so the default sends none.
    retry_after: Literal["absent", "seconds", "http-date"] = "absent"
    retry_after_s: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> FaultProfile:
        total = (
            self.throttle_rate
            + self.error_rate_500
            + self.error_rate_503
            + self.drop_rate
            + self.applied_then_dropped_rate
        )
        if total > 1:
            raise ValueError(f"fault rates add up to {total}, more than 1")
        for start, end in (*self.outages, *self.dropped_outages):
            if end <= start:
                raise ValueError(f"outage [{start}, {end}) ends before it starts")
        for start, end in self.outages:
            for d_start, d_end in self.dropped_outages:
                if start < d_end and d_start < end:
                    raise ValueError(
                        f"outage [{start}, {end}) overlaps dropped outage [{d_start}, {d_end}):"
                        " a request in both would need two answers; move one of them"
                    )
        return self

    @classmethod
    def from_file(cls, path: Path) -> FaultProfile:
        """Read a profile from a flat TOML file."""
        with path.open("rb") as fh:
            return cls.model_validate(tomllib.load(fh))


class SimulatorSettings(BaseModel):
    """Everything a simulator needs, except the clock and sleep (injected at construction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: any free port
    client_id: str = "local-client"
    # None is "open" mode: any secret is accepted for `client_id`.
    client_secret: SecretStr | None = None
    token_lifetime_s: int = Field(default=3600, ge=2)
    quota_count: int = Field(default=6000, ge=1)
    quota_period_s: float = Field(default=60.0, gt=0)
    # AEMO's gateway most likely counts only what it let through [guess]; True makes refused
    # requests use up the quota too.
    quota_counts_refused: bool = False
    db_path: Path | None = None  # None: records live in memory only
    seed: int = 0
    faults: FaultProfile = FaultProfile()
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # 10 MB [doc]
    create_status: Literal[200, 201] = 200  # AEMO documents both [doc]
    require_nmi_first: bool = False  # unknown whether AEMO requires it [guess]
    # When set, an X-initiatingParticipantID outside this set is answered 403.
    allowed_participants: frozenset[str] | None = None
    # The X-market value required; None accepts any non-empty value.
    market: str | None = "WEM"
    # How a search answers: AEMO's operation definition shows a bare list of records
    # [spec]; "envelope" is our guess at what carries page counts and a transaction id.
    search_answer: Literal["envelope", "list"] = "envelope"
    rules_file: Path | None = None  # None: the bundled data/rules.toml
    schema_file: Path | None = None  # None: the bundled data/schema.toml
