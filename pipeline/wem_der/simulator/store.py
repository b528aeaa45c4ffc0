"""Where the simulated register keeps its records: the interface and the in-memory store.

The register holds, per NMI, the versions of its installation (the last one is current)
and its NMI record, plus counters for the ids it assigns (connection, device, exception).
`MemoryStore` is the default; `wem_der.simulator.sqlite_store.SqliteStore` keeps the same
data in a file so a restarted simulator remembers what it accepted. Records are plain
decoded-JSON dicts owned by the store once saved: callers must not mutate them after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JsonObject = dict[str, Any]
IdKind = Literal["connection", "device", "exception"]


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of an installation and the exceptions raised on it."""

    record: JsonObject
    exceptions: list[JsonObject] = field(default_factory=list)


class Store(Protocol):
    """What the handlers need from storage."""

    def installation(self, nmi: str) -> Version | None:
        """The current version for `nmi`, if any."""

    def history(self, nmi: str) -> list[Version]:
        """Every version for `nmi`, oldest first (empty if none)."""

    def installations(self) -> Iterator[Version]:
        """The current version of every installation."""

    def save_installation(self, nmi: str, version: Version) -> None:
        """Append `version` as the current version for `nmi`."""

    def nmi(self, nmi: str) -> JsonObject | None:
        """The NMI record for `nmi`, if any."""

    def nmis(self) -> Iterator[JsonObject]:
        """Every NMI record."""

    def save_nmi(self, nmi: str, record: JsonObject) -> None:
        """Create or replace the NMI record for `nmi`."""

    def next_id(self, kind: IdKind) -> int:
        """The next server-assigned id of `kind`, starting at 1."""

    def counts(self) -> dict[str, int]:
        """How many installations, installation versions and NMI records are held."""

    def clear(self) -> None:
        """Forget everything, counters included."""

    def close(self) -> None:
        """Release resources; pending writes are made durable first."""


class MemoryStore:
    """Dicts in memory: nothing survives the process."""

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._nmis: dict[str, JsonObject] = {}
        self._counters: dict[str, int] = {}
        self._version_count = 0

    def installation(self, nmi: str) -> Version | None:
        versions = self._versions.get(nmi)
        return versions[-1] if versions else None

    def history(self, nmi: str) -> list[Version]:
        return list(self._versions.get(nmi, ()))

    def installations(self) -> Iterator[Version]:
        return (versions[-1] for versions in self._versions.values())

    def save_installation(self, nmi: str, version: Version) -> None:
        self._versions.setdefault(nmi, []).append(version)
        self._version_count += 1

    def nmi(self, nmi: str) -> JsonObject | None:
        return self._nmis.get(nmi)

    def nmis(self) -> Iterator[JsonObject]:
        return iter(self._nmis.values())

    def save_nmi(self, nmi: str, record: JsonObject) -> None:
        self._nmis[nmi] = record

    def next_id(self, kind: IdKind) -> int:
        value = self._counters.get(kind, 0) + 1
        self._counters[kind] = value
        return value

    def counts(self) -> dict[str, int]:
        return {
            "installations": len(self._versions),
            "installation_versions": self._version_count,
            "nmi_records": len(self._nmis),
        }

    def clear(self) -> None:
        self._versions.clear()
        self._nmis.clear()
        self._counters.clear()
        self._version_count = 0

    def close(self) -> None:
        """Nothing to release."""
