"""Where a run sends, and as whom: the configured AEMO endpoints, or the embedded simulator.

The `local` profile names no register: a run then starts the simulator in-process, on a
loopback port, with a secret made for the run and the run's quota, and keeps its records
in the state directory beside the ledger.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import SecretStr

from wem_der.config import Settings, is_loopback
from wem_der.errors import ConfigError
from wem_der.records.shapes import RecordKind
from wem_der.send.quota import parse_rate
from wem_der.send.routes import Routes

log = structlog.get_logger()

SIMULATOR_FILE = "simulator.sqlite3"


@dataclass(frozen=True)
class Endpoints:
    """Where to send, and as whom."""

    token_url: str
    routes: Routes
    client_id: str
    client_secret: SecretStr
    participant_id: str
    simulator: Any = None  # the embedded simulator, for its statistics


def check_endpoints(settings: Settings, kind: RecordKind) -> None:
    """Refuse, before anything starts, a run whose register settings are incomplete."""
    if settings.simulated:
        return
    needed = {
        "token_url": "--token-url / WEMDER_TOKEN_URL",
        "client_id": "--client-id / WEMDER_CLIENT_ID",
        "client_secret": "WEMDER_CLIENT_SECRET / --client-secret-file",
        "participant_id": "--participant-id / WEMDER_PARTICIPANT_ID",
        ("base_url" if kind is RecordKind.INSTALLATION else "nmi_base_url"): (
            "--base-url / WEMDER_BASE_URL"
            if kind is RecordKind.INSTALLATION
            else "--nmi-base-url / WEMDER_NMI_BASE_URL"
        ),
    }
    missing = [how for name, how in needed.items() if getattr(settings, name) is None]
    if missing:
        raise ConfigError(f"profile {settings.env!r} needs: {', '.join(missing)}")


@contextlib.asynccontextmanager
async def endpoints(settings: Settings) -> AsyncIterator[Endpoints]:
    """The embedded simulator (the `local` default), or the configured AEMO endpoints.

    The caller has refused incomplete settings with `check_endpoints` already, before the
    run started anything (run/wiring.py does so first thing).
    """
    if settings.simulated:
        from wem_der.simulator import Simulator, SimulatorSettings

        secret = SecretStr(secrets.token_urlsafe(24))
        count, period_s = parse_rate(settings.rate_limit)
        client_id = settings.client_id or "local-client"
        sim_settings = SimulatorSettings(
            client_id=client_id,
            client_secret=secret,
            quota_count=count,
            quota_period_s=period_s,
            db_path=settings.state_dir / SIMULATOR_FILE,
        )
        async with Simulator(sim_settings) as sim:
            yield Endpoints(
                token_url=sim.token_url,
                routes=Routes(sim.installation_url, sim.nmi_url),
                client_id=client_id,
                client_secret=secret,
                participant_id=settings.participant_id or "LOCALNSP",
                simulator=sim,
            )
        return
    assert settings.token_url and settings.client_id and settings.client_secret  # noqa: PT018
    assert settings.participant_id  # see check_endpoints; narrows for the type checker
    yield Endpoints(
        token_url=settings.token_url,
        routes=Routes(settings.base_url or "", settings.nmi_base_url or ""),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        participant_id=settings.participant_id,
    )


def warn_if_insecure(settings: Settings, ep: Endpoints) -> None:
    """Say so when --insecure turns verification off for a host other than this one."""
    if not settings.insecure:
        return
    urls = [ep.token_url, ep.routes.installation_url, ep.routes.nmi_url]
    remote = [u for u in urls if u and not is_loopback(u)]
    if remote:
        log.warning("tls.verification_disabled", hosts=remote, flag="--insecure")
