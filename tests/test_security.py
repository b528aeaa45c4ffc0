"""Security, through `wem-der` as an operator runs it: the client secret and the tokens show
nowhere (also when a run fails); certificate verification is on unless explicitly turned
off, which is warned about and which the prod profile refuses; what a run writes is its
owner's alone.

The fault matrix (test_fault_matrix.py) checks for secrets after runs through every fault;
here a distinctive secret is followed through the paths where an error message is built.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr
from wem_der.config import load_settings
from wem_der.errors import ConfigError
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Outcome
from wem_der.send.client import TlsSettings, build_ssl_context
from wem_der.simulator import Simulator

from tests.e2e import (
    CLIENT_ID,
    endpoint_flags,
    read_summary,
    records,
    sim_settings,
    wem_der,
    write_jsonl,
)
from tests.leaks import Secrets, assert_nothing_leaked, everything_written, record_tokens
from tests.scripted import Reply, serve

# A client secret that nothing else in a run could contain by chance.
DISTINCT = "wemder-sec-" + "Q9vX2kLp7" * 3


# -- the secret and the tokens ------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["accepted", "credentials refused", "misconfigured"])
async def test_the_secret_and_the_tokens_show_nowhere(tmp_path: Path, scenario: str) -> None:
    """A finished run, one whose credentials are refused and one stopped by a wrong URL: the
    secret (plain or as Basic credentials) and every token issued are in no output or file."""
    secrets = Secrets(CLIENT_ID, DISTINCT)
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        expected = "not-the-secret-given" if scenario == "credentials refused" else DISTINCT
        cfg = sim_settings(client_secret=SecretStr(expected))
        async with Simulator(cfg, middlewares=[record_tokens(secrets)]) as sim:
            flags = endpoint_flags(sim, tmp_path, secret=DISTINCT)
            if scenario == "misconfigured":
                flags += ["--base-url", sim.installation_url + "/v9"]  # the last flag wins
            args = ["submit", str(path), "--out", str(tmp_path / "out"), *flags]
            done = await wem_der(args, tmp_path)
    if scenario == "accepted":
        assert done.code == 0, done.stderr
        assert "auth.token_refreshed" in {line["event"] for line in done.logs()}
    else:
        assert done.code == 3, done.stderr
        reason = read_summary(tmp_path / "out")["abort_reason"]
        expect = "refused the client credentials" if scenario != "misconfigured" else "404"
        assert expect in reason
        assert expect in done.stdout + done.stderr
    assert bool(secrets.tokens) == (scenario != "credentials refused")
    written = everything_written(done, tmp_path, skip=[tmp_path / "secret.txt"])
    assert_nothing_leaked(secrets, written)


async def test_a_token_endpoint_that_echoes_the_credentials(tmp_path: Path) -> None:
    """A gateway that quotes the Basic credentials and the secret back in its refusal: the
    error message, the outcome files and the summary carry them redacted."""
    secrets = Secrets(CLIENT_ID, DISTINCT)
    basic = base64.b64encode(f"{CLIENT_ID}:{DISTINCT}".encode()).decode()
    async with asyncio.timeout(60), serve() as server:
        detail = f"Authorization failed for 'Basic {basic}' (secret {DISTINCT})"
        server.script(Reply(401, {"code": 401, "title": "Unauthorized", "detail": detail}))
        path = write_jsonl(tmp_path / "in.jsonl", records(3))
        (tmp_path / "secret.txt").write_text(DISTINCT + "\n", encoding="utf-8")
        args = [
            "submit", str(path), "--out", str(tmp_path / "out"),
            "--token-url", server.url + "/oauth/token",
            "--base-url", server.url + "/der",
            "--nmi-base-url", server.url + "/der",
            "--client-id", CLIENT_ID,
            "--client-secret-file", str(tmp_path / "secret.txt"),
            "--participant-id", "SECNSP",
            "--state-dir", str(tmp_path / "state"),
            "--no-progress", "--log-format", "json",
        ]  # fmt: skip
        done = await wem_der(args, tmp_path)
        seen = [s.path for s in server.seen]
    assert done.code == 3, done.stderr
    assert seen == ["/oauth/token"]  # refused credentials are not tried again
    assert "Authorization failed for 'Basic ***' (secret ***)" in done.stdout
    written = everything_written(done, tmp_path, skip=[tmp_path / "secret.txt"])
    assert_nothing_leaked(secrets, written)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--env", "prod", "--insecure"], {}, "production profile"),
        (["--timeout-s", "-1"], {}, "invalid settings: timeout_s"),
        (["--rate-limit", "lots"], {}, "--rate-limit: rate 'lots' is not COUNT/PERIOD"),
    ],
    ids=["prod-insecure", "bad-setting", "bad-rate"],
)
async def test_configuration_errors_do_not_show_the_secret(
    tmp_path: Path, flags: list[str], env: dict[str, str], message: str
) -> None:
    """Refused settings, with the secret given by flag and by environment: exit 2, a message,
    and the secret in neither."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(1))
        base = ["submit", str(path), "--out", str(tmp_path / "out"), "--no-progress"]
        by_flag = await wem_der([*base, *flags, "--client-secret", DISTINCT], tmp_path, env=env)
        by_env = await wem_der(
            [*base, *flags], tmp_path, env=env | {"WEMDER_CLIENT_SECRET": DISTINCT}
        )
    for done in (by_flag, by_env):
        assert done.code == 2, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert DISTINCT not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


# -- certificate verification ---------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("env", ["local", "preprod", "prod"])
def test_verification_is_on_unless_asked_for(env: str) -> None:
    """No profile turns verification off: without --insecure the context checks the
    certificate and the host name."""
    settings = load_settings(env, environ={})
    assert settings.insecure is False
    ctx = build_ssl_context(TlsSettings(verify=not settings.insecure))
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)


@pytest.mark.parametrize("case", ["remote, --insecure", "remote, verified", "loopback, --insecure"])
async def test_insecure_is_explicit_and_warned(tmp_path: Path, ca: trustme.CA, case: str) -> None:
    """A register whose certificate the client cannot verify: refused unless --insecure;
    with it, a warning naming every host that is not this machine's loopback."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(2))
        async with Simulator(sim_settings(), ssl_context=tls_server(ca)) as sim:
            flags = endpoint_flags(sim, tmp_path)
            # 0.0.0.0 is no loopback address by name, yet reaches this host.
            remote = sim.base_url.replace("127.0.0.1", "0.0.0.0")
            urls = {
                u.replace(sim.base_url, remote)
                for u in (sim.token_url, sim.installation_url, sim.nmi_url)
            }
            if case.startswith("remote"):
                flags = [f.replace(sim.base_url, remote) for f in flags]
            if case.endswith("--insecure"):
                flags.append("--insecure")
            args = ["submit", str(path), "--out", str(tmp_path / "out"), *flags]
            done = await wem_der(args, tmp_path)
            tokens = sim.stats()["tokens_issued"]
        warnings = [line for line in done.logs() if line["event"] == "tls.verification_disabled"]
        named = [line for line in warnings if "hosts" in line]
    if case == "remote, verified":
        assert done.code == 3
        assert "CERTIFICATE_VERIFY_FAILED" in read_summary(tmp_path / "out")["abort_reason"]
        assert tokens == 0
        assert warnings == []
        return
    assert done.code == 0, done.stderr
    assert all(line["level"] == "warning" for line in warnings)
    if case == "loopback, --insecure":
        assert named == []
    else:
        [line] = named
        assert set(line["hosts"]) == urls
        assert line["flag"] == "--insecure"


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--insecure"], {}),
        ([], {"WEMDER_INSECURE": "true"}),
        # The profile says production; the environment cannot say otherwise.
        (["--insecure"], {"WEMDER_PRODUCTION": "false"}),
    ],
    ids=["flag", "environment", "production-overridden"],
)
async def test_the_prod_profile_refuses_insecure(
    tmp_path: Path, flags: list[str], env: dict[str, str]
) -> None:
    """--env prod with verification off, however asked: exit 2, a message, nothing run."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(1))
        out = tmp_path / "out"
        args = ["submit", str(path), "--out", str(out), "--env", "prod", *flags]
        done = await wem_der(args, tmp_path, env=env)
    assert done.code == 2
    assert "wem-der: profile 'prod' is a production profile: certificate verification" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not out.exists()
    with pytest.raises(ConfigError, match="production profile"):
        load_settings("prod", overrides={"insecure": "--insecure" in flags or None}, environ=env)


# -- file permissions ---------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> Iterator[Path]:
    yield root
    if root.is_dir():
        for child in sorted(root.iterdir()):
            yield from tree(child)


async def test_what_a_run_writes_is_the_owners_alone(tmp_path: Path) -> None:
    """Under umask 0, a run's directories are 0o700 (the parents it made too) and its
    outcome files, summary, run.json, problems.csv and ledger 0o600."""
    async with asyncio.timeout(60):
        recs = records(3)
        recs[2].update(availablePhasesCount=1, installedPhasesCount=3)  # rejected: a problem row
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        # The embedded simulator, the default state directory (.wem-der/<register>) and an
        # outcome directory two levels below anything that exists.
        args = ["submit", str(path), "--out", "runs/nightly/out", "--no-progress"]
        done = await wem_der(args, tmp_path, umask=0)
    assert done.code == 1, done.stderr  # the rejected record
    out = tmp_path / "runs" / "nightly" / "out"
    [state] = (tmp_path / ".wem-der").iterdir()
    assert (out / "problems.csv").read_bytes().count(b"\n") == 2  # header and the row
    made = [*tree(tmp_path / "runs"), *tree(tmp_path / ".wem-der")]
    expected = {f"{o.value}.jsonl" for o in Outcome} | {"summary.json", "run.json"}
    assert expected | {"problems.csv", "ledger.sqlite3", "simulator.sqlite3"} <= {
        p.name for p in made
    }
    assert {str(p): mode(p) for p in made} == {str(p): 0o700 if p.is_dir() else 0o600 for p in made}
    assert state.name == "local-simulator"


async def test_the_ledger_and_its_wal_files_are_private(tmp_path: Path) -> None:
    """While open (when SQLite's -wal and -shm files exist), under umask 0: the ledger's
    files are 0o600 and the directories made for it 0o700."""
    path = tmp_path / "deep" / "state" / "ledger.sqlite3"
    old = os.umask(0)
    try:
        async with asyncio.timeout(10), Ledger(path):
            files = {p.name: mode(p) for p in path.parent.iterdir()}
            dirs = [mode(path.parent), mode(path.parent.parent)]
    finally:
        os.umask(old)
    assert files == {
        "ledger.sqlite3": 0o600,
        "ledger.sqlite3-wal": 0o600,
        "ledger.sqlite3-shm": 0o600,
    }
    assert dirs == [0o700, 0o700]
