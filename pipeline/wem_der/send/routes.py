"""Where each operation of each API lives, and how its body is shaped [spec].

Installation v2 wraps the record in `{"data": ...}`; NMI v1 sends it bare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from wem_der.records.outcomes import Action
from wem_der.records.shapes import RecordKind


@dataclass(frozen=True, slots=True)
class Routes:
    """The two DER API base URLs of one environment."""

    installation_url: str
    nmi_url: str

    def collection(self, kind: RecordKind) -> str:
        if kind is RecordKind.INSTALLATION:
            return f"{self.installation_url.rstrip('/')}/installation"
        return f"{self.nmi_url.rstrip('/')}/nmi-details"

    def item(self, kind: RecordKind, nmi: str) -> str:
        return f"{self.collection(kind)}/{quote(nmi, safe='')}"

    def write(self, kind: RecordKind, action: Action, nmi: str) -> tuple[str, str]:
        """(method, url) of a create or an update."""
        if action is Action.CREATE:
            return "POST", self.collection(kind)
        return "PUT", self.item(kind, nmi)


def request_body(kind: RecordKind, payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a create or update of `kind`."""
    return {"data": payload} if kind is RecordKind.INSTALLATION else payload
