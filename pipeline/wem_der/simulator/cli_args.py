"""Command-line flags of `wem-der simulate`, kept here so the CLI module stays thin.

The client secret never appears on the command line (it would show in `ps`): it comes from
`--client-secret-file` or the environment variable `WEMDER_SIM_CLIENT_SECRET`; with
neither, the simulator runs in "open" mode and accepts any secret for the client id.
Fault flags override the same keys of a `--faults` profile file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from wem_der.simulator.settings import FaultProfile, SimulatorSettings

SECRET_ENV = "WEMDER_SIM_CLIENT_SECRET"  # noqa: S105 -- a variable name, not a secret
_QUOTA = re.compile(r"(?P<count>\d+)/(?P<period>\d+(?:\.\d+)?)s?")
_WINDOW = re.compile(r"(?P<start>\d+(?:\.\d+)?):(?P<end>\d+(?:\.\d+)?)")

# The flags that override the same FaultProfile field of a profile file.
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
    "outages",
    "dropped_outages",
    "outage_retry_after_s",
    "outages_cover_token",
)


def _quota(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, float]:
    match = _QUOTA.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"expected COUNT/PERIOD such as 6000/60s, not {text!r}")
    return int(match["count"]), float(match["period"])


def _windows(
    ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]
) -> tuple[tuple[float, float], ...] | None:
    windows = []
    for text in texts:
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise click.BadParameter(
                f"expected START:END in seconds since the simulator started, such as 60:180,"
                f" not {text!r}"
            )
        start, end = float(match["start"]), float(match["end"])
        if end <= start:
            raise click.BadParameter(f"{text!r} ends before it starts: END must exceed START")
        windows.append((start, end))
    # None when the flag is not given, so that the profile file's windows stand.
    return tuple(windows) or None


def simulator_options() -> list[click.Parameter]:
    """The simulator's flags, for a command of `wem-der` or of a benchmark."""
    path = click.Path(path_type=Path)
    return [
        click.Option(["--host"], default="127.0.0.1", help="address to listen on"),
        click.Option(["--port"], type=int, default=8080, help="port to listen on (0: any)"),
        click.Option(["--client-id"], default="local-client", help="OAuth client id"),
        click.Option(
            ["--client-secret-file"],
            type=path,
            help=f"file holding the client secret (else ${SECRET_ENV}; else any secret is "
            "accepted)",
        ),
        click.Option(["--token-lifetime-s"], type=int, default=3600),
        click.Option(
            ["--quota"],
            default="6000/60s",
            callback=_quota,
            metavar="COUNT/PERIOD",
            help="requests allowed per sliding window, e.g. 6000/60s or 300/3s",
        ),
        click.Option(["--db"], type=path, help="SQLite file keeping records across restarts"),
        click.Option(
            ["--faults"],
            type=path,
            metavar="PROFILE.toml",
            help="fault profile; the fault flags from --latency-ms on override its keys",
        ),
        click.Option(["--seed"], type=int, default=0, help="seed of the fault draws"),
        click.Option(
            ["--require-nmi-first"],
            is_flag=True,
            help="refuse an installation whose NMI record does not exist (422)",
        ),
        click.Option(["--create-status"], type=click.Choice([200, 201]), default=200),
        click.Option(
            ["--allowed-participant"],
            multiple=True,
            metavar="ID",
            help="answer 403 to any other X-initiatingParticipantID (repeatable)",
        ),
        # Faults: each overrides the same key of the --faults profile file.
        click.Option(["--latency-ms"], type=float),
        click.Option(["--jitter-ms"], type=float),
        *(
            click.Option(["--" + name.replace("_", "-")], type=float, metavar="P")
            for name in (
                "throttle_rate",
                "error_rate_500",
                "error_rate_503",
                "drop_rate",
                "applied_then_dropped_rate",
            )
        ),
        click.Option(["--retry-after"], type=click.Choice(["absent", "seconds", "http-date"])),
        click.Option(["--retry-after-s"], type=float),
        click.Option(
            ["--outage", "outages"],
            multiple=True,
            callback=_windows,
            metavar="START:END",
            help="answer every DER request 503 from START to END seconds after the start "
            "(repeatable)",
        ),
        click.Option(
            ["--dropped-outage", "dropped_outages"],
            multiple=True,
            callback=_windows,
            metavar="START:END",
            help="close every DER request's connection unanswered from START to END seconds "
            "after the start (repeatable)",
        ),
        click.Option(
            ["--outage-retry-after", "outage_retry_after_s"],
            type=float,
            metavar="SECONDS",
            help="Retry-After on an outage's 503s (default: none)",
        ),
        click.Option(
            ["--outages-cover-token/--outages-spare-token", "outages_cover_token"],
            default=None,
            help="whether the OAuth token endpoint is down in the outages too (default: spared)",
        ),
    ]


def _secret(options: Mapping[str, Any]) -> SecretStr | None:
    if options["client_secret_file"] is not None:
        return SecretStr(options["client_secret_file"].read_text(encoding="utf-8").strip())
    value = os.environ.get(SECRET_ENV)
    return SecretStr(value) if value else None


def settings_from_args(options: Mapping[str, Any]) -> SimulatorSettings:
    """Settings from parsed flags, by name (and the secret's file or environment)."""
    profile = FaultProfile.from_file(options["faults"]) if options["faults"] else FaultProfile()
    overrides = {name: options[name] for name in _FAULT_FLAGS if options[name] is not None}
    if overrides:
        profile = FaultProfile.model_validate({**profile.model_dump(), **overrides})
    count, period = options["quota"]
    allowed = options["allowed_participant"]
    return SimulatorSettings(
        host=options["host"],
        port=options["port"],
        client_id=options["client_id"],
        client_secret=_secret(options),
        token_lifetime_s=options["token_lifetime_s"],
        quota_count=count,
        quota_period_s=period,
        db_path=options["db"],
        seed=options["seed"],
        faults=profile,
        require_nmi_first=options["require_nmi_first"],
        create_status=options["create_status"],
        allowed_participants=frozenset(allowed) if allowed else None,
    )
