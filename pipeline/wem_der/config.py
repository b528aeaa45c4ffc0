"""Settings: a profile from `config/NAME.toml`, then `WEMDER_*` environment variables, then flags.

Loaded once at the edge (the CLI), validated, frozen. A profile never holds a secret: the
client secret comes from `WEMDER_CLIENT_SECRET`, `--client-secret-file` or the flag.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from wem_der.errors import ConfigError
from wem_der.files.pathtext import to_text
from wem_der.send.quota import parse_rate

ENV_PREFIX = "WEMDER_"
_PROFILE_PRODUCTION = "profile_production"
SECRET_FIELDS = frozenset({"client_secret"})


class Settings(BaseModel):
    """Everything a run needs; each component receives only its own fields from `run/wiring.py`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = "local"
    # A production profile refuses anything that weakens transport security.
    production: bool = False
    # Start the simulator in-process unless a base URL points elsewhere.
    embedded_simulator: bool = False

    token_url: str | None = None
    base_url: str | None = None
    nmi_base_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    participant_id: str | None = None
    market: str = "WEM"

    rate_limit: str = "6000/60s"
    quota_margin_s: float = Field(default=0.1, ge=0)
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    action: Literal["create", "update", "upsert"] = "upsert"
    compression: Literal["gzip", "deflate", "none"] = "gzip"
    timeout_s: float = Field(default=60.0, gt=0)
    # Twelve attempts with full jitter capped at max_delay_s ride out about 1.5 minutes of
    # outage on average (3 at most) before a record is given up as failed.
    max_attempts: int = Field(default=12, ge=1)
    max_elapsed_s: float = Field(default=600.0, gt=0)
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=30.0, ge=0)
    token_refresh_margin_s: float = Field(default=120.0, ge=0)

    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False

    # AEMO does not publish which 422 codes mean "an installation already exists for this
    # NMI"; a profile lists the codes it knows, and the pattern is matched against the
    # error's title and detail as a fallback.
    already_exists_codes: tuple[str, ...] = ()
    already_exists_pattern: str = "(?i)already (exists?|registered)|exists already|duplicate"
    # An update of an NMI the register has no record of earns 404 "ID not found" [spec];
    # a 404 worded otherwise is a gateway's for a path it does not know, a wrong base URL,
    # and stops the run rather than rejecting every record.
    record_missing_pattern: str = r"(?i)\bID not found\b"
    # 403s on this many distinct records in a row mean the participant is not entitled:
    # stop the run rather than burn the batch.
    stop_after_forbidden: int = Field(default=3, ge=1)

    allow_unknown_fields: bool = False
    enumerations_file: Path | None = None
    # Unless given, `.wem-der/<register>` (see `register_scope`): what one register has
    # accepted says nothing about another, so each keeps its own ledger.
    state_dir: Path = Path(".wem-der")

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_is_a_rate(cls, value: str) -> str:
        # Checked here, so that a quota from a profile, the environment, a flag or a run's
        # stored settings is refused alike, as an invalid setting, before a run starts.
        try:
            parse_rate(value)
        except ValueError as exc:
            raise ValueError(
                f"as set by the profile, WEMDER_RATE_LIMIT or --rate-limit: {exc}"
            ) from None
        return value

    @field_validator("token_url", "base_url", "nmi_base_url")
    @classmethod
    def _url_holds_no_credentials(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here, so that a URL from a profile, the environment, a flag or a run's
        # stored settings is refused alike, before it reaches run.json, the ledger or a log.
        # The message names the setting, never the URL: the URL is what holds the secret.
        if value is None:
            return value
        name = info.field_name or ""
        how = f"as set by the profile, {ENV_PREFIX}{name.upper()} or --{name.replace('_', '-')}"
        # '@' anywhere, not only before the host: a password holding '/' ends the host early.
        if "@" in value:
            raise ValueError(
                f"{how}: the URL holds '@', as credentials in a URL do (user:password@host),"
                " and would be recorded with the run's settings; give the host alone, the"
                " client id with --client-id and the secret with WEMDER_CLIENT_SECRET or"
                " --client-secret-file"
            )
        if "?" in value or "#" in value:
            raise ValueError(
                f"{how}: the URL has a query string or fragment (?... or #...), where a token"
                " or secret would go, and would be recorded with the run's settings; give the"
                " endpoint's URL without one"
            )
        return value

    @field_validator("production")
    @classmethod
    def _production_is_the_profile_s(cls, value: bool, info: ValidationInfo) -> bool:
        # `production` is the profile's to say (its word comes in the validation context, see
        # `load_settings`): an environment variable (WEMDER_PRODUCTION=false) or a flag must
        # not lower it, or it would let --insecure through against production. What they
        # give is still checked as a boolean first, as any setting is.
        return value or (info.context or {}).get(_PROFILE_PRODUCTION) is True

    @property
    def simulated(self) -> bool:
        """Whether a run talks to the simulator it starts in-process, not to a register."""
        return self.embedded_simulator and not self.base_url

    def secret_free(self) -> dict[str, Any]:
        """The settings as JSON, for `run.json`: the secret replaced by whether it was set,
        paths as `to_text` writes them (a file name need not be UTF-8; JSON must be)."""
        out = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        for name in PATH_FIELDS:
            if (path := getattr(self, name)) is not None:
                out[name] = to_text(str(path))
        out["client_secret_set"] = self.client_secret is not None
        return out


# Settings that name a file or directory.
PATH_FIELDS = tuple(
    name for name, field in Settings.model_fields.items() if field.annotation in (Path, Path | None)
)


def is_loopback(url: str) -> bool:
    """Whether a URL's host is on this machine (where turning verification off is harmless)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register_scope(settings: Settings) -> str:
    """A directory name for the register a run talks to: `local-simulator`, or its API host
    and path (`partner.api.preprod.aemo.com.au-v2-der-register`)."""
    if settings.simulated:
        return "local-simulator"
    parts = urlsplit(settings.base_url or settings.nmi_base_url or "")
    # The port is left out: a simulator restarted on another port is the same register.
    raw = f"{parts.hostname or 'unknown'}{parts.path}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", raw).strip("-").lower()


def _profile_text(env: str, config_dir: Path | None) -> str:
    if config_dir is not None:
        path = config_dir / f"{env}.toml"
        if not path.is_file():
            raise ConfigError(f"no profile {env!r}: {path} does not exist")
        return path.read_text(encoding="utf-8")
    # config/*.toml ship inside the package as pipeline/profiles (a link to config/).
    resource = resources.files("wem_der").joinpath(f"profiles/{env}.toml")
    if not resource.is_file():
        raise ConfigError(f"no profile {env!r}; the profiles are local, preprod and prod")
    return resource.read_text(encoding="utf-8")


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = environ.get(ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        if field.annotation is tuple[str, ...]:
            out[name] = tuple(v.strip() for v in value.split(",") if v.strip())
        else:
            out[name] = value
    secret_file = environ.get(ENV_PREFIX + "CLIENT_SECRET_FILE")
    if secret_file and "client_secret" not in out:
        out["client_secret"] = read_secret_file(Path(secret_file))
    return out


def read_secret_file(path: Path) -> str:
    """The first line of a secret file; the error names the file, never its content."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the client secret file {path}: {exc.strerror}") from None


def load_settings(
    env: str = "local",
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_dir: Path | None = None,
) -> Settings:
    """Profile, then environment, then flags (`overrides`, with None meaning "not given")."""
    environ = os.environ if environ is None else environ
    if config_dir is None and environ.get(ENV_PREFIX + "CONFIG_DIR"):
        config_dir = Path(environ[ENV_PREFIX + "CONFIG_DIR"])
    try:
        profile = tomllib.loads(_profile_text(env, config_dir))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {env!r} is not valid TOML: {exc}") from None
    leaked = SECRET_FIELDS & profile.keys()
    if leaked:
        raise ConfigError(
            f"profile {env!r} holds {', '.join(sorted(leaked))}; secrets never go in a profile:"
            " set WEMDER_CLIENT_SECRET or pass --client-secret-file"
        )
    merged: dict[str, Any] = {"env": env, **profile, **_from_environ(environ)}
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = Settings.model_validate(
            merged, context={_PROFILE_PRODUCTION: profile.get("production") is True}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {_reason(e['msg'])}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    if "state_dir" not in merged:
        settings = settings.model_copy(
            update={
                "state_dir": Settings.model_fields["state_dir"].default / register_scope(settings)
            }
        )
    if settings.production and settings.insecure:
        raise ConfigError(
            f"profile {env!r} is a production profile: certificate verification cannot be"
            " turned off (drop --insecure)"
        )
    return settings


def _reason(message: str) -> str:
    """Pydantic's message for a validator's ValueError, without its "Value error, " prefix."""
    return message.removeprefix("Value error, ")
