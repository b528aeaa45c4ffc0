"""submit, end to end over TLS: mutual TLS with certificates made here, and --insecure."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
import trustme
from wem_der.config import load_settings
from wem_der.errors import ConfigError, RunAborted
from wem_der.simulator import Simulator
from wem_der.testing import VirtualClock

from tests.e2e import (
    assert_each_once,
    endpoint_flags,
    lines_of,
    read_summary,
    records,
    run_cli,
    run_settings,
    sim_settings,
    submit,
    write_jsonl,
)


@dataclass(frozen=True)
class Pki:
    """A private CA, and the PEM files a client needs."""

    ca: trustme.CA
    server: trustme.LeafCert
    ca_file: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client_cert:
            # The partner gateway's mutual TLS [doc]: no client certificate, no connection.
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    client = ca.issue_cert("participant.e2e.example")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    server = ca.issue_cert("127.0.0.1", "localhost")
    return Pki(ca, server, ca_file, cert, key)


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    """The register demands a client certificate; with --client-cert/--client-key it works."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        ctx = pki.server_context(require_client_cert=True)
        async with Simulator(sim_settings(), ssl_context=ctx) as sim:
            assert sim.base_url.startswith("https://127.0.0.1:")
            settings = run_settings(
                sim,
                tmp_path,
                client_cert=pki.client_cert,
                client_key=pki.client_key,
                ca_file=pki.ca_file,
            )
            result = await submit(settings, tmp_path, [path])
            held = sim.stats()["installations"]
        found = assert_each_once(result.out_dir, lines_of(path, 5))
        assert len(found["accepted"]) == 5
        assert held == 5
        assert result.exit_code == 0


async def test_mutual_tls_from_the_command_line(tmp_path: Path, pki: Pki) -> None:
    """`wem-der submit --client-cert --client-key --ca-file` against the TLS register."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(3))
        out = tmp_path / "out"
        ctx = pki.server_context(require_client_cert=True)
        async with Simulator(sim_settings(), ssl_context=ctx) as sim:
            tls = [
                "--client-cert", str(pki.client_cert),
                "--client-key", str(pki.client_key),
                "--ca-file", str(pki.ca_file),
            ]  # fmt: skip
            args = ["submit", str(path), "--out", str(out), *tls, *endpoint_flags(sim, tmp_path)]
            done = await run_cli(args, tmp_path)
            held = sim.stats()["installations"]
        assert done.code == 0, done.stderr
        assert len(assert_each_once(out, lines_of(path, 3))["accepted"]) == 3
        assert held == 3


async def test_without_the_client_certificate_the_run_fails(tmp_path: Path, pki: Pki) -> None:
    """Same register, no client certificate: no token, nothing sent, the run stops (exit 3)
    once it has waited out --max-outage, naming the likely cause."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(3))
        ctx = pki.server_context(require_client_cert=True)
        async with Simulator(sim_settings(), ssl_context=ctx) as sim:
            settings = run_settings(sim, tmp_path, ca_file=pki.ca_file)
            # The token request is retried with backoff, on a clock that needs no waiting.
            clock = VirtualClock()
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
        assert isinstance(result.aborted, RunAborted)
        assert result.exit_code == 3
        assert stats["tokens_issued"] == 0
        assert stats["der_requests_received"] == 0
        found = assert_each_once(result.out_dir, lines_of(path, 3))
        assert len(found["failed"]) == 3
        summary = read_summary(result.out_dir)
        reason = summary["abort_reason"]
        assert "token endpoint" in reason
        # Nothing ever answered: the run waited it out as an outage, to --max-outage, and
        # said what is likely wrong. Under TLS 1.3 the refusal reaches the client as a bare
        # close; the message says what that most likely means.
        assert "--max-outage 3 h 00 min" in reason
        assert "check --client-cert and --client-key" in reason
        [outage] = summary["outages"]
        assert "check --client-cert and --client-key" in outage["cause"]


async def test_without_the_ca_the_server_is_not_trusted(tmp_path: Path, pki: Pki) -> None:
    """Verification is on by default: a register signed by an unknown CA gets nothing."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(2))
        ctx = pki.server_context(require_client_cert=False)
        async with Simulator(sim_settings(), ssl_context=ctx) as sim:
            settings = run_settings(sim, tmp_path)
            clock = VirtualClock()
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
        assert result.exit_code == 3
        assert stats["tokens_issued"] == 0
        assert "CERTIFICATE_VERIFY_FAILED" in read_summary(result.out_dir)["abort_reason"]


async def test_insecure_against_a_remote_host_is_warned(tmp_path: Path, pki: Pki) -> None:
    """--insecure works, and says so when a URL's host is not this machine's loopback."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(2))
        ctx = pki.server_context(require_client_cert=False)
        async with Simulator(sim_settings(), ssl_context=ctx) as sim:
            # 0.0.0.0 is not a loopback address by name, yet connecting to it reaches this
            # host: a "remote" URL that still ends at the simulator.
            remote = sim.base_url.replace("127.0.0.1", "0.0.0.0")
            settings = run_settings(
                sim,
                tmp_path,
                insecure=True,
                token_url=sim.token_url.replace(sim.base_url, remote),
                base_url=sim.installation_url.replace(sim.base_url, remote),
                nmi_base_url=sim.nmi_url.replace(sim.base_url, remote),
            )
            with structlog.testing.capture_logs() as logs:
                result = await submit(settings, tmp_path, [path], out="remote")
            local = run_settings(sim, tmp_path, insecure=True)
            with structlog.testing.capture_logs() as local_logs:
                local_result = await submit(local, tmp_path, [path], out="local")
        assert result.exit_code == 0
        assert local_result.exit_code == 0
        warned = [e for e in logs if e["event"] == "tls.verification_disabled" and "hosts" in e]
        assert len(warned) == 1
        assert warned[0]["log_level"] == "warning"
        assert set(warned[0]["hosts"]) == {
            settings.token_url,
            settings.base_url,
            settings.nmi_base_url,
        }
        assert not [e for e in local_logs if "hosts" in e]


def test_the_prod_profile_refuses_insecure() -> None:
    """A production profile never turns certificate verification off."""
    with pytest.raises(ConfigError, match="production profile"):
        load_settings("prod", overrides={"insecure": True}, environ={})
    assert load_settings("preprod", overrides={"insecure": True}, environ={}).insecure
