"""Running the simulator: URLs, TLS, `serve`, and the CLI flags."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from pydantic import SecretStr
from wem_der.cli.main import parse as parse_cli
from wem_der.simulator import FaultProfile, Simulator, SimulatorSettings, serve
from wem_der.simulator.cli_args import SECRET_ENV, settings_from_args
from wem_der.simulator.testing import SimClient

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))


async def test_urls_point_at_the_three_apis() -> None:
    """The URL attributes name the listening port and AEMO's base paths."""
    async with asyncio.timeout(10), Simulator(SETTINGS) as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.base_url)
        assert sim.oauth_url == sim.base_url + "/oauth/v1"
        assert sim.token_url == sim.base_url + "/oauth/v1/token"
        assert sim.installation_url == sim.base_url + "/v2/der-register"
        assert sim.nmi_url == sim.base_url + "/wem/v1/der-register"
    with pytest.raises(RuntimeError):
        sim.stats()


async def test_tls() -> None:
    """With an ssl_context the simulator speaks HTTPS."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with (
        asyncio.timeout(10),
        Simulator(SETTINGS, ssl_context=server_context) as sim,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context)) as session,
    ):
        assert sim.base_url.startswith("https://")
        token = await SimClient(session, sim).fetch_token()
        assert token


async def test_serve_prints_urls_and_runs_until_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`serve` prints where the APIs are (never the secret) and answers until cancelled."""
    settings = SETTINGS.model_copy(update={"client_secret": SecretStr("hunter2-zz")})
    async with asyncio.timeout(10):
        task = asyncio.create_task(serve(settings))
        out = ""
        while "Stats:" not in out:
            await asyncio.sleep(0)
            out += capsys.readouterr().out
        assert "client secret required" in out
        assert "hunter2-zz" not in out
        match = re.search(r"Stats:\s+(\S+)", out)
        assert match is not None
        async with aiohttp.ClientSession() as session, session.get(match[1]) as resp:
            assert resp.status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def parse(*argv: str) -> SimulatorSettings:
    options = parse_cli(["simulate", *argv])
    assert isinstance(options, dict), options
    return settings_from_args(options)


def test_cli_defaults_are_open_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a secret file or variable, any secret is accepted."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    settings = parse()
    assert settings.client_secret is None
    assert (settings.quota_count, settings.quota_period_s) == (6000, 60.0)
    assert settings.faults == FaultProfile()


def test_cli_secret_from_file_or_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The secret comes from --client-secret-file, else the environment."""
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert parse().client_secret == SecretStr("from-env")
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    assert parse("--client-secret-file", str(secret_file)).client_secret == SecretStr("from-file")


def test_cli_quota_and_fault_flags_override_the_profile(tmp_path: Path) -> None:
    """--quota reads COUNT/PERIOD; fault flags override the profile file's keys."""
    profile = tmp_path / "p.toml"
    profile.write_text("error_rate_500 = 0.1\nlatency_ms = 5.0\n")
    settings = parse(
        "--quota", "300/3s", "--faults", str(profile), "--latency-ms", "20", "--seed", "9",
        "--require-nmi-first", "--allowed-participant", "A", "--allowed-participant", "B",
    )  # fmt: skip
    assert (settings.quota_count, settings.quota_period_s) == (300, 3.0)
    assert settings.faults.error_rate_500 == 0.1
    assert settings.faults.latency_ms == 20
    assert settings.seed == 9
    assert settings.require_nmi_first
    assert settings.allowed_participants == frozenset({"A", "B"})


def test_cli_refuses_a_bad_quota(capsys: pytest.CaptureFixture[str]) -> None:
    """A quota that is not COUNT/PERIOD is a usage error naming the expected form."""
    assert parse_cli(["simulate", "--quota", "6000 per minute"]) == 2
    assert "COUNT/PERIOD" in capsys.readouterr().err
