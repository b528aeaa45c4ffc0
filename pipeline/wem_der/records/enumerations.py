"""Which record fields are enumerations or have a fixed format, and their allowed values.

This is data, not code (`pipeline/wem_der/data/enumerations.toml`, or a file given with
`enumerations_file`), because AEMO has not published most of the values: an operator who
learns one can add it without a new release.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path


# eq=False: a table is hashed by identity, so validation can cache what it derives from
# one (its dicts could not be hashed by value).
@dataclass(frozen=True, eq=False)
class Enumerations:
    """The table of enumerated fields and formats, loaded from TOML."""

    formats: Mapping[str, re.Pattern[str]]
    sets: Mapping[str, frozenset[str]]
    fields: Mapping[str, Mapping[str, str]]

    @classmethod
    def from_toml(cls, text: str) -> Enumerations:
        raw = tomllib.loads(text)
        return cls(
            formats={k: re.compile(v) for k, v in raw.get("formats", {}).items()},
            sets={k: frozenset(v) for k, v in raw.get("sets", {}).items()},
            fields={kind: dict(table) for kind, table in raw.get("fields", {}).items()},
        )

    @classmethod
    def from_file(cls, path: Path) -> Enumerations:
        return cls.from_toml(path.read_text(encoding="utf-8"))

    def for_kind(self, kind: str) -> Mapping[str, frozenset[str]]:
        """Field name -> allowed values, for every enumerated field of a record kind."""
        return {field: self.sets[name] for field, name in self.fields.get(kind, {}).items()}


@cache
def bundled_enumerations() -> Enumerations:
    """The table shipped with the package."""
    text = resources.files("wem_der").joinpath("data/enumerations.toml").read_text("utf-8")
    return Enumerations.from_toml(text)


def load_enumerations(path: Path | None) -> Enumerations | None:
    """The table in `path`, or None (the bundled table) when no file is configured."""
    return Enumerations.from_file(path) if path else None
