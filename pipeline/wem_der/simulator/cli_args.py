"""Command-line flags of `wem-der simulate`, kept here so the CLI module stays thin.

The client secret never appears on the command line (it would show in `ps`): it comes from
`--client-secret-file` or the environment variable `WEMDER_SIM_CLIENT_SECRET`; with
neither, the simulator runs in "open" mode and accepts any secret for the client id.
Fault flags override the same keys of a `--faults` profile file.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from wem_der.simulator.settings import FaultProfile, SimulatorSettings

SECRET_ENV = "WEMDER_SIM_CLIENT_SECRET"  # noqa: S105 -- a variable name, not a secret
_QUOTA = re.compile(r"(?P<count>\d+)/(?P<period>\d+(?:\.\d+)?)s?")

# flag dest -> FaultProfile field, for the flags that override a profile file.
_FAULT_FLAGS = (
    "latency_ms",
    "jitter_ms",
    "throttle_rate",
    "error_rate_500",
    "error_rate_503",
    "drop_rate",
    "applied_then_dropped_rate",
    "retry_after",
    "retry_after_s",
)


def _quota(text: str) -> tuple[int, float]:
    match = _QUOTA.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected COUNT/PERIOD such as 6000/60s, not {text!r}")
    return int(match["count"]), float(match["period"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any)")
    parser.add_argument("--client-id", default="local-client", help="OAuth client id")
    parser.add_argument(
        "--client-secret-file",
        type=Path,
        help=f"file holding the client secret (else ${SECRET_ENV}; else any secret is accepted)",
    )
    parser.add_argument("--token-lifetime-s", type=int, default=3600)
    parser.add_argument(
        "--quota",
        type=_quota,
        default=(6000, 60.0),
        metavar="COUNT/PERIOD",
        help="requests allowed per sliding window, e.g. 6000/60s or 300/3s",
    )
    parser.add_argument("--db", type=Path, help="SQLite file keeping records across restarts")
    parser.add_argument("--faults", type=Path, metavar="PROFILE.toml", help="fault profile")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument(
        "--require-nmi-first",
        action="store_true",
        help="refuse an installation whose NMI record does not exist (422)",
    )
    parser.add_argument("--create-status", type=int, choices=(200, 201), default=200)
    parser.add_argument(
        "--allowed-participant",
        action="append",
        metavar="ID",
        help="answer 403 to any other X-initiatingParticipantID (repeatable)",
    )
    faults = parser.add_argument_group("faults (override the profile file)")
    for name in ("latency_ms", "jitter_ms"):
        faults.add_argument("--" + name.replace("_", "-"), type=float, dest=name)
    for name in (
        "throttle_rate",
        "error_rate_500",
        "error_rate_503",
        "drop_rate",
        "applied_then_dropped_rate",
    ):
        faults.add_argument("--" + name.replace("_", "-"), type=float, dest=name, metavar="P")
    faults.add_argument("--retry-after", choices=("absent", "seconds", "http-date"))
    faults.add_argument("--retry-after-s", type=float)


def _secret(ns: argparse.Namespace) -> SecretStr | None:
    if ns.client_secret_file is not None:
        return SecretStr(ns.client_secret_file.read_text(encoding="utf-8").strip())
    value = os.environ.get(SECRET_ENV)
    return SecretStr(value) if value else None


def settings_from_args(ns: argparse.Namespace) -> SimulatorSettings:
    """Settings from parsed flags (and the secret's file or environment)."""
    profile = FaultProfile.from_file(ns.faults) if ns.faults else FaultProfile()
    overrides: dict[str, Any] = {
        name: getattr(ns, name) for name in _FAULT_FLAGS if getattr(ns, name) is not None
    }
    if overrides:
        profile = FaultProfile.model_validate({**profile.model_dump(), **overrides})
    count, period = ns.quota
    allowed = frozenset(ns.allowed_participant) if ns.allowed_participant else None
    return SimulatorSettings(
        host=ns.host,
        port=ns.port,
        client_id=ns.client_id,
        client_secret=_secret(ns),
        token_lifetime_s=ns.token_lifetime_s,
        quota_count=count,
        quota_period_s=period,
        db_path=ns.db,
        seed=ns.seed,
        faults=profile,
        require_nmi_first=ns.require_nmi_first,
        create_status=ns.create_status,
        allowed_participants=allowed,
    )
