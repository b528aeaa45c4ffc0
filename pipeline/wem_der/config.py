"""Settings: a profile from `config/NAME.toml`, then `WEMDER_*` environment variables, then
the values given by name (the command line's flags, or the library's keywords).

Loaded once at the edge (the CLI, or a library call), validated, frozen. A profile never
holds a secret: the client secret comes from `WEMDER_CLIENT_SECRET`, a secret file or the
value given.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypedDict, cast
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
from wem_der.files.pathtext import from_text, to_text
from wem_der.send.breaker import parse_duration
from wem_der.send.quota import parse_rate
from wem_der.send.quota_store import STORE_SCHEMES, shown_url

ENV_PREFIX = "WEMDER_"
_PROFILE_PRODUCTION = "profile_production"
SECRET_FIELDS = frozenset({"client_secret"})

PathText = str | os.PathLike[str]


class SettingOptions(TypedDict, total=False):
    """Settings given by name: the long options of `submit`, `resume` and `resubmit` with
    underscores, which are also the library's keywords. Each one given (not None) beats
    its `WEMDER_*` variable, which beats the profile."""

    env: str
    config_dir: PathText
    base_url: str
    nmi_base_url: str
    token_url: str
    client_id: str
    client_secret: str | SecretStr
    client_secret_file: PathText
    participant_id: str
    state_dir: PathText
    rate_limit: str
    burst: str
    quota_store: str
    max_share: float
    concurrency: int
    action: Literal["create", "update", "upsert"]
    compression: Literal["gzip", "deflate", "none"]
    timeout_s: float
    max_attempts: int
    max_outage: str
    client_cert: PathText
    client_key: PathText
    ca_file: PathText
    insecure: bool
    allow_unknown_fields: bool
    metrics_file: PathText
    metrics_push: str
    metrics_job: str
    plan: Literal["register", "ledger", "none"]
    carry_register_ids: bool
    search_batch_size: int
    search_page_size: int


def _readable(value: str, parse: Callable[[str], object], name: str) -> str:
    """`value`, if `parse` reads it; else its complaint, naming where `name` is set."""
    try:
        parse(value)
    except ValueError as exc:
        where = f"the profile, {ENV_PREFIX}{name.upper()} or --{name.replace('_', '-')}"
        raise ValueError(f"as set by {where}: {exc}") from None
    return value


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
    # A ceiling on shorter windows besides the quota, such as a gateway's spike arrest:
    # COUNT/PERIOD, "off", or None for the quota's average rate over one second.
    burst: str | None = None
    # Where every job of the participant shares the quota's log: None for this host's (in
    # the state directory), or a redis:// URL for jobs on several hosts.
    quota_store: str | None = None
    # How long a lost quota store is waited for before the run stops, resumably.
    quota_store_wait_s: float = Field(default=60.0, gt=0)
    # The most of the quota this job takes while others share it (None: all they leave).
    max_share: float | None = Field(default=None, gt=0, le=1)
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
    # The register is taken for down after this many outage failures in a row (5xx,
    # dropped connections, timeouts) with no answer between: the run then pauses, probing
    # it one request at a time, its waits growing to `probe_max_delay_s` (send/breaker.py).
    outage_after: int = Field(default=3, ge=1)
    probe_max_delay_s: float = Field(default=60.0, gt=0)
    # How long an outage is waited out before the run stops, resumably (exit 3): the
    # length of a nightly maintenance window, as "3h", "45m" or seconds.
    max_outage: str = "3h"

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

    # What decides whether a record is sent (run/stages.py): "register" reads the register's
    # current version of each record the ledger cannot decide, "ledger" consults the ledger
    # alone, "none" neither (every record is sent, as with --force). None: "register" for
    # installations, "ledger" for NMI records (the NMI API has no search) without a note.
    plan: Literal["register", "ledger", "none"] | None = None
    # Whether an update planned from the register carries the register's connectionId and
    # deviceId for the connections and devices it matches (a guess about AEMO: compare.py).
    carry_register_ids: bool = True
    # NMIs in one search, and the search's page size (25, 50 or 100 [spec]).
    search_batch_size: int = Field(default=100, ge=1)
    search_page_size: int = 100

    allow_unknown_fields: bool = False
    enumerations_file: Path | None = None
    # Prometheus text for a scheduler: a file rewritten every few seconds (node_exporter's
    # textfile collector) and a Pushgateway, under the job name `metrics_job`.
    metrics_file: Path | None = None
    metrics_push: str | None = None
    metrics_job: str = Field(default="wem-der", min_length=1)
    # Unless given, `.wem-der/<register>` (see `register_scope`): what one register has
    # accepted says nothing about another, so each keeps its own ledger.
    state_dir: Path = Path(".wem-der")

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_is_a_rate(cls, value: str) -> str:
        # Checked here, so that a quota from a profile, the environment, a flag or a run's
        # stored settings is refused alike, as an invalid setting, before a run starts.
        return _readable(value, parse_rate, "rate_limit")

    @field_validator("max_outage")
    @classmethod
    def _max_outage_is_a_duration(cls, value: str) -> str:
        return _readable(value, parse_duration, "max_outage")

    @field_validator("search_page_size")
    @classmethod
    def _page_size_is_the_search_s(cls, value: int) -> int:
        if value not in (25, 50, 100):
            raise ValueError(f"the search pages by 25, 50 or 100 records, not {value}")
        return value

    @field_validator("burst")
    @classmethod
    def _burst_is_a_rate(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() == "off":
            return value
        try:
            parse_rate(value)
        except ValueError as exc:
            raise ValueError(
                f"as set by the profile, WEMDER_BURST or --burst: {exc}, or 'off'"
            ) from None
        return value

    @field_validator("quota_store")
    @classmethod
    def _quota_store_is_redis(cls, value: str | None) -> str | None:
        # The message names the store without its password (`shown_url`).
        if value is None:
            return value
        parts = urlsplit(value)
        how = f"as set by the profile, WEMDER_QUOTA_STORE or --quota-store ({shown_url(value)})"
        if parts.scheme not in STORE_SCHEMES or not parts.hostname:
            raise ValueError(f"{how}: give a Redis URL, redis://HOST:PORT/DB")
        if parts.query or parts.fragment:
            # A password there would be recorded with the run's settings.
            raise ValueError(f"{how}: a query string (?...) is not taken; give HOST:PORT/DB")
        return value

    @field_validator("token_url", "base_url", "nmi_base_url", "metrics_push")
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
            # The register's credentials have options of their own; a Pushgateway's have none.
            instead = (
                ", the client id with --client-id and the secret with WEMDER_CLIENT_SECRET or"
                " --client-secret-file"
                if name != "metrics_push"
                else " (a Pushgateway that asks for credentials is not supported)"
            )
            raise ValueError(
                f"{how}: the URL holds '@', as credentials in a URL do (user:password@host),"
                f" and would be recorded with the run's settings; give the host alone{instead}"
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
        if self.quota_store is not None:
            # Its password, if any, is a secret: `resume` is given the URL again for it.
            out["quota_store"] = shown_url(self.quota_store)
        return out


# Settings that name a file or directory.
PATH_FIELDS = tuple(
    name for name, field in Settings.model_fields.items() if field.annotation in (Path, Path | None)
)
# Options that give a Settings field its value as is; the others say which profile to read
# (`env`, `config_dir`) or where the secret is (`client_secret_file`).
_FIELD_OPTIONS = (SettingOptions.__optional_keys__ & Settings.model_fields.keys()) - {"env"}
# Settings a run records and `resume` / `resubmit` reuse: all but the profile's name (given
# separately) and the secret (never recorded).
_REUSED = frozenset(Settings.model_fields) - {"env", *SECRET_FIELDS}


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


def settings_from(
    given: SettingOptions, *, env: str | None = None, stored: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from the profile, the environment and the values `given` (None: not given).

    `stored`: the secret-free settings an earlier run recorded (its `run.json`); they take
    the place of the profile and the environment, and values given now still override them.
    The client secret is never stored, so it comes from the environment or `given` as ever.
    """
    # Read by name: `given` may be any command's options, of which only these are settings.
    values = cast(Mapping[str, Any], given)
    overrides: dict[str, Any] = {
        name: from_text(value) if name in PATH_FIELDS else value
        for name, value in (stored or {}).items()
        if name in _REUSED and value is not None
    }
    overrides.update(
        (name, values[name]) for name in _FIELD_OPTIONS if values.get(name) is not None
    )
    if (secret_file := values.get("client_secret_file")) is not None:
        overrides["client_secret"] = read_secret_file(Path(secret_file))
    config_dir = values.get("config_dir")
    settings = load_settings(
        values.get("env") or env or "local",
        overrides=overrides,
        config_dir=None if config_dir is None else Path(config_dir),
    )
    # Absolute, so that `resume` finds the ledger and the certificates from any directory.
    paths = {name: getattr(settings, name) for name in PATH_FIELDS}
    return settings.model_copy(
        update={name: path.absolute() for name, path in paths.items() if path is not None}
    )


def _reason(message: str) -> str:
    """Pydantic's message for a validator's ValueError, without its "Value error, " prefix."""
    return message.removeprefix("Value error, ")
