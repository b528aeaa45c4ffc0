"""Looking for secrets where they must never be: log lines, console output, the files a run
leaves behind.

A secret leaks in more shapes than its own text: the client secret also travels as Basic
credentials (base64 of `id:secret`), and every bearer token the register issued is one.
`Secrets` holds those shapes; `leaks` says where any of them turns up.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from wem_der.simulator.app import OAUTH_PREFIX, Handler


@dataclass
class Secrets:
    """What must not be seen: the client secret, as itself and inside Basic credentials, and
    each token issued while the test ran."""

    client_id: str
    secret: str
    tokens: list[str] = field(default_factory=list)

    def needles(self) -> dict[str, bytes]:
        basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode())
        found = {"the client secret": self.secret.encode(), "the Basic credentials": basic}
        found.update({f"token #{n + 1}": token.encode() for n, token in enumerate(self.tokens)})
        return found


def record_tokens(into: Secrets) -> Middleware:
    """A middleware that adds every token the simulator it is given to
    (`Simulator(..., middlewares=[...])`) hands out to `into`."""

    @web.middleware
    async def recorded(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        body = getattr(response, "body", None)
        if request.path.startswith(OAUTH_PREFIX + "/") and response.status == 200:
            assert isinstance(body, bytes), body
            into.tokens.append(orjson.loads(body)["acess_token"])
        return response

    return recorded


def files_under(*roots: Path, skip: Iterable[Path] = ()) -> dict[str, bytes]:
    """The bytes of every file below `roots` (a ledger's -wal and -shm included), but `skip`."""
    skipped = {path.resolve() for path in skip}
    return {
        str(path): path.read_bytes()
        for root in roots
        if root.exists()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.resolve() not in skipped
    }


class Console(Protocol):
    """What a finished process printed: a `Done` or `Result` of the test helpers."""

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


def everything_written(done: Console, *roots: Path, skip: Iterable[Path] = ()) -> dict[str, bytes]:
    """A process's console output and every file below `roots` but `skip`."""
    return {
        "stdout": done.stdout.encode(),
        "stderr": done.stderr.encode(),
        **files_under(*roots, skip=skip),
    }


def leaks(secrets: Secrets, places: Mapping[str, bytes]) -> list[str]:
    """Where each secret shape turns up, as "<what> in <where>" (empty: nowhere)."""
    return [
        f"{what} in {where}"
        for where, data in places.items()
        for what, needle in secrets.needles().items()
        if needle in data
    ]


def assert_nothing_leaked(
    secrets: Secrets, places: Mapping[str, bytes], *, must_include: str = "ledger.sqlite3"
) -> None:
    """No shape of `secrets` in any of `places`, among which is a file whose name ends with
    `must_include` (the run's ledger, by default): proof that the scan saw the run's files."""
    assert any(name.endswith(must_include) for name in places), sorted(places)
    assert leaks(secrets, places) == []


@contextlib.contextmanager
def json_logs() -> Iterator[io.BytesIO]:
    """structlog rendering JSON lines into a buffer, as `wem-der --log-format json` does
    (pipeline/wem_der/cli/main.py), at debug level so that nothing is filtered out before it
    is seen.

    Loggers are not cached, and the defaults come back afterwards, so no later test writes
    into this buffer.
    """
    buffer = io.BytesIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.BytesLoggerFactory(buffer),
        cache_logger_on_first_use=False,
    )
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
