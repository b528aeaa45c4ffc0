"""A scripted HTTP server for client-side tests: it answers from a script, records what it saw.

It runs on a real loopback socket with `auto_decompress=False`, so a test sees the bytes on
the wire: the raw (compressed) body, Content-Length, and whether the body came chunked.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    `drop` closes the connection without answering; `truncate` promises a longer body than
    it sends, then closes; `hold` waits for the event before answering.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    truncate: bool = False
    hold: asyncio.Event | None = None


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    raw: bytes  # the body as sent, still compressed

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def decoded(self) -> bytes:
        """The body with its Content-Encoding undone (zlib format for deflate, per HTTP)."""
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            return gzip.decompress(self.raw)
        if encoding == "deflate":
            return zlib.decompress(self.raw)
        return self.raw


class Scripted:
    """Answers every request with the next scripted reply, then with `default`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply(status=200, json={"transactionId": "txn-default", "data": {}})
        self.url = ""
        self._arrived = asyncio.Condition()

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def wait_seen(self, count: int) -> None:
        """Return once `count` requests have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.seen) >= count)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        reply = self.replies.popleft() if self.replies else self.default
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), request.headers, raw)
        )
        async with self._arrived:
            self._arrived.notify_all()
        if reply.hold is not None:
            await reply.hold.wait()
        body = reply.body if reply.body is not None else b""
        if reply.json is not None:
            body = orjson.dumps(reply.json)
        if reply.drop or reply.truncate:
            assert request.transport is not None
            if reply.truncate:
                response = web.StreamResponse(status=reply.status)
                response.content_length = len(body) + 100
                await response.prepare(request)
                await response.write(body)
            request.transport.close()
            raise ConnectionResetError("scripted drop")
        headers = {"Content-Type": "application/json", **reply.headers}
        return web.Response(status=reply.status, body=body, headers=headers)


@asynccontextmanager
async def serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Scripted]:
    """Run a `Scripted` server on 127.0.0.1 for the duration of the block."""
    scripted = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, auto_decompress=False, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "https" if ssl_context else "http"
        scripted.url = f"{scheme}://{host}:{port}"
        yield scripted
    finally:
        await runner.cleanup()
