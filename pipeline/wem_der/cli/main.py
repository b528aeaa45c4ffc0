"""`wem-der`: its commands and options, logging set-up and exit codes; no business logic.

Each command hands cli/commands.py its options as a dict (`parse`): the long option names
with underscores (`--with` is `corrected`), the arguments (`paths`, `run`), and `command`,
the command's name.

Exit codes: 0 every record accepted, conditional or skipped; 1 any rejected, invalid or
failed; 2 a usage or configuration error, or a ledger or outcome file that cannot be
written; 3 the run was aborted (credentials refused, client misconfigured, interrupted).
`verify` exits 0 only when the register holds every record as it is, 1 otherwise;
`followup` 0 when it read back every record of the run that ended conditional, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import difflib
import gc
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import structlog

from wem_der import __version__
from wem_der.cli.guarded_output import Loss, guarded_output
from wem_der.cli.progress import Progress
from wem_der.errors import WemDerError, one_error
from wem_der.report.display import escape_log_values, shown
from wem_der.simulator.cli_args import simulator_options

_PATH = click.Path(path_type=Path)
_KIND = click.Choice(["installation", "nmi"])


def _opt(name: str, **attrs: Any) -> click.Option:
    return click.Option([name], **attrs)


def _as_list(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    return list(value)


def _paths(
    *, required: bool, text: str = "JSONL or JSON array, .gz ok, - for stdin"
) -> click.Argument:
    """The input files; a list, as the rest of the CLI takes them."""
    metavar = "PATH..." if required else "[PATH]..."
    return click.Argument(
        ["paths"], nargs=-1, required=required, metavar=metavar, callback=_as_list, help=text
    )


def _settings_options() -> dict[str, list[click.Parameter]]:
    """The settings of a run, each also WEMDER_<NAME> in the environment (run/resolve.py
    layers them): the values here are None unless given."""
    return {
        "Environment (each also WEMDER_<NAME>, e.g. WEMDER_BASE_URL)": [
            _opt("--env", help="profile in config/: local (default), preprod, prod"),
            _opt("--config-dir", type=_PATH, help="read profiles from here instead of the package"),
            _opt("--base-url", help="Installation v2 base URL; no simulator is started when set"),
            _opt("--nmi-base-url", help="NMI v1 base URL"),
            _opt("--token-url", help="OAuth token URL"),
            _opt("--client-id"),
            _opt("--client-secret", help="better: WEMDER_CLIENT_SECRET or --client-secret-file"),
            _opt("--client-secret-file", type=_PATH, help="a file whose first line is the secret"),
            _opt("--participant-id", help="sent as X-initiatingParticipantID"),
            _opt("--state-dir", type=_PATH, help="where the ledger lives (default .wem-der)"),
        ],
        "Transport": [
            _opt("--rate-limit", help="quota as COUNT/PERIOD, e.g. 6000/60s (default) or 300/3s"),
            _opt(
                "--burst",
                metavar="COUNT/PERIOD|off",
                help="ceiling on shorter windows, e.g. 100/1s (default: the quota's average"
                " rate over one second); off lifts it",
            ),
            _opt(
                "--quota-store",
                metavar="URL",
                help="share the quota with jobs on other hosts: redis://HOST:PORT/DB (default:"
                " shared on this host, in the state directory)",
            ),
            _opt(
                "--max-share",
                type=click.FloatRange(0, 1, min_open=True),
                metavar="FRACTION",
                help="the most of the quota this job takes from the jobs it shares it with",
            ),
            _opt("--concurrency", type=int, help="workers (default: derived from the quota)"),
            _opt("--action", type=click.Choice(["create", "update", "upsert"])),
            _opt("--compression", type=click.Choice(["gzip", "deflate", "none"])),
            _opt("--timeout-s", type=float, help="per request"),
            _opt("--max-attempts", type=int, help="per record, retries included"),
            _opt(
                "--max-outage",
                metavar="DURATION",
                help="how long the run waits out a register that is down before it stops,"
                " resumably: 3h (default), 45m, 600",
            ),
            _opt("--client-cert", type=_PATH, help="PEM client certificate for mutual TLS"),
            _opt("--client-key", type=_PATH, help="PEM private key of --client-cert"),
            _opt("--ca-file", type=_PATH, help="PEM CA bundle that signs the server"),
            _opt(
                "--insecure",
                is_flag=True,
                default=None,
                help="do not verify the server's certificate (refused by the prod profile)",
            ),
            _opt(
                "--allow-unknown-fields",
                is_flag=True,
                default=None,
                help="send fields the record shapes do not know instead of refusing the record",
            ),
        ],
        "Metrics (Prometheus text)": [
            _opt(
                "--metrics-file",
                type=_PATH,
                help="rewrite this file every few seconds and at the end (for node_exporter's"
                " textfile collector: name it *.prom)",
            ),
            _opt("--metrics-push", metavar="URL", help="push the same to this Pushgateway"),
            _opt("--metrics-job", metavar="NAME", help="the Pushgateway's job (default wem-der)"),
        ],
    }


def _register_options(*, plan: bool) -> dict[str, list[click.Parameter]]:
    """How the register is read: with `plan`, also whether and how a run plans from it.
    Settings, as those of `_settings_options`."""
    planning = [
        _opt(
            "--plan",
            type=click.Choice(["register", "ledger", "none"]),
            help="what decides whether a record is sent: the register's current version of"
            " each record the ledger cannot decide (register, the default for installations),"
            " the ledger alone, or nothing (every record is sent, as with --force)",
        ),
        _opt(
            "--carry-register-ids/--no-carry-register-ids",
            default=None,
            help="an update planned from the register carries its connectionId and deviceId"
            " values (default: on)",
        ),
    ]
    reads = [
        _opt("--search-batch-size", type=int, help="NMIs in one search (default 100)"),
        _opt(
            "--search-page-size",
            type=click.Choice(["25", "50", "100"]),
            callback=lambda ctx, param, value: None if value is None else int(value),
            help="records in one page of a search (default 100)",
        ),
    ]
    return {"Reading the register": [*(planning if plan else []), *reads]}


def _output_options() -> list[click.Parameter]:
    return [
        _opt(
            "--log-format",
            type=click.Choice(["console", "json"]),
            help="default: console on a terminal",
        ),
        _opt("--no-progress", is_flag=True, help="no progress bar"),
    ]


def _options(**options: Any) -> dict[str, Any]:
    """What every command does when parsed: hands its options back to `main`, named."""
    return {**options, "command": click.get_current_context().info_name}


class _Command(click.Command):
    """A command whose --help lists its options under headings (`sections`), after its own."""

    def __init__(
        self,
        name: str,
        params: list[click.Parameter],
        sections: dict[str, list[click.Parameter]] | None = None,
        **attrs: Any,
    ) -> None:
        self.sections = sections or {}
        grouped = [param for group in self.sections.values() for param in group]
        super().__init__(name, params=[*params, *grouped], callback=_options, **attrs)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        grouped = {id(param) for group in self.sections.values() for param in group}
        own: list[click.Parameter] = [
            param
            for param in self.get_params(ctx)
            if isinstance(param, click.Option) and id(param) not in grouped
        ]
        for title, params in {"Options": own, **self.sections}.items():
            rows = [param.get_help_record(ctx) for param in params]
            if found := [row for row in rows if row is not None]:
                with formatter.section(title):
                    formatter.write_dl(found)


_REUSE = (
    "Settings (endpoints, client id, participant, quota, state directory...) are those "
    "recorded for RUN in its run.json; flags given here override them. The client "
    "secret is never recorded: give it again (WEMDER_CLIENT_SECRET or "
    "--client-secret-file). RUN_ID is looked up in the ledger of --state-dir "
    "(default .wem-der); a DIR needs no --state-dir."
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Bulk submission of records to AEMO's WEM DER Register.",
)
@click.version_option(__version__, prog_name="wem-der", message="%(prog)s %(version)s")
def cli() -> None:
    """The `wem-der` command; its commands are added below."""


cli.add_command(
    _Command(
        "submit",
        [
            _paths(required=True),
            _opt(
                "--out",
                type=_PATH,
                required=True,
                help="outcome directory: new, or a finished run's (whose files this run replaces)",
            ),
            _opt("--kind", type=_KIND, default="installation"),
            _opt("--force", is_flag=True, help="send records unchanged since last time"),
            _opt("--dry-run", is_flag=True, help="validate and estimate; no network"),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=True)},
        help="send records from files to the register",
    )
)
cli.add_command(
    _Command(
        "validate",
        [
            _paths(required=True),
            _opt("--kind", type=_KIND, default="installation"),
            _opt("--allow-unknown-fields", is_flag=True, default=None),
            _opt("--env"),
            _opt("--config-dir", type=_PATH),
        ],
        help="pre-flight records locally; no network",
    )
)
cli.add_command(
    _Command(
        "resume",
        [
            click.Argument(["run"], metavar="RUN_ID|DIR"),
            _paths(required=False, text="(optional) the run's inputs"),
            _opt("--out", type=_PATH, help="(optional) the run's outcome directory"),
            _opt("--kind", type=_KIND, help="(optional) the run's kind"),
            _opt("--force", is_flag=True, default=None, help="(optional) as the run"),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=True)},
        short_help="continue a stopped or killed run into its outcome directory",
        help="Continue a stopped or killed run into the same outcome directory. Records with a "
        "final outcome are not sent again; records whose request was on the wire when the run "
        "died are first read back from the register and sent only if it lacks them. "
        + _REUSE
        + " The inputs, --out, --kind and --force of `submit` may be repeated; they must then "
        "be the run's.",
    )
)
cli.add_command(
    _Command(
        "resubmit",
        [
            click.Argument(["run"], metavar="RUN_ID|DIR"),
            _opt(
                "--only",
                default="failed,rejected",
                help="outcomes to send again (default failed,rejected)",
            ),
            click.Option(
                ["--with", "corrected"],
                type=_PATH,
                metavar="FILE",
                help="corrected records, matched by NMI; only the chosen records found here are "
                "sent",
            ),
            _opt("--out", type=_PATH, help="outcome directory (default: beside the original)"),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=True)},
        short_help="send chosen records of an earlier run again",
        help="Send again the records of RUN whose outcome is one of --only, as a new run linked "
        "to RUN (always sent, even if unchanged). With --with, only those of them that FILE "
        "has a corrected version of (matched by NMI) are sent, that version, and a field-level "
        "diff of each is printed. " + _REUSE,
    )
)
cli.add_command(
    _Command(
        "report",
        [
            click.Argument(["run"], required=False, metavar="[RUN_ID|DIR]"),
            _opt("--nmi", help="history of this NMI across runs"),
            _opt("--kind", type=_KIND, default="installation"),
            _opt(
                "--format",
                type=click.Choice(["text", "json", "html"]),
                default="text",
                help="html: one self-contained page of a run, with charts",
            ),
            _opt("--out", type=_PATH, metavar="FILE", help="write here instead of printing"),
            _opt("--state-dir", type=_PATH, help="the ledger's directory (default .wem-der)"),
            _opt("--env"),
            _opt("--config-dir", type=_PATH),
        ],
        help="summarise a run, or the history of one NMI",
    )
)

cli.add_command(
    _Command(
        "verify",
        [
            _paths(required=True),
            _opt(
                "--out",
                type=_PATH,
                required=True,
                help="where verify.jsonl, differences.csv and summary.json go",
            ),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=False)},
        short_help="check records against the register, writing nothing to it",
        help="Check each installation record of PATH... against the register's current"
        " version of its NMI, read in bulk; nothing is written to the register. Each record is"
        " same, differs, missing, invalid or error (verify.jsonl, differences.csv,"
        " summary.json). Exit 0 only when every record is the same.",
    )
)
cli.add_command(
    _Command(
        "export",
        [
            _opt(
                "--out",
                required=True,
                metavar="FILE|-",
                help="a .jsonl or .jsonl.gz file, or - for standard output",
            ),
            _opt("--stage", type=click.Choice(["Confirmed", "Conditional"])),
            _opt("--equipment-type"),
            _opt("--device-type"),
            _opt("--from-commissioning-date", metavar="YYYY-MM-DD"),
            _opt("--to-commissioning-date", metavar="YYYY-MM-DD"),
            _opt("--nmi-file", type=_PATH, help="only these NMIs: one a line"),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=False)},
        short_help="write the installations the register holds, as input to submit",
        help="Write the installations the register holds (with no filter, all of them),"
        " each NMI once, as records that submit takes back: submitting an unchanged export"
        " sends no write.",
    )
)
cli.add_command(
    _Command(
        "followup",
        [
            click.Argument(["run"], metavar="RUN_ID|DIR"),
            _opt(
                "--out",
                type=_PATH,
                help="where followup.jsonl and followup.json go (default: the run's outcome"
                " directory)",
            ),
            *_output_options(),
        ],
        {**_settings_options(), **_register_options(plan=False)},
        short_help="read back the records of a run that ended conditional",
        help="Read back from the register, in bulk, the records of RUN that ended conditional:"
        " each NMI's stage now, the connections and devices still Conditional, its current"
        " exceptions where the register gives them, and whether it has become Confirmed"
        " (followup.jsonl, replacing an earlier one, and followup.json). Nothing is written to"
        " the register. Exit 0 when every record was read back, whatever its stage; 1 when any"
        " is missing from the register or could not be read. " + _REUSE,
    )
)


cli.add_command(
    _Command("simulate", simulator_options(), help="serve the local simulator of the register")
)


def parse(argv: Sequence[str]) -> dict[str, Any] | int:
    """The options of the command `argv` names (see the module's docstring); or, when there
    is none to run (--help, --version, a usage error, said on stdout or stderr), the exit
    code. A value is never echoed in an error about an unknown option: it may be a secret
    (`--client-secrett=...`)."""
    try:
        parsed: dict[str, Any] | int = cli.main(
            list(argv), prog_name="wem-der", standalone_mode=False
        )
    except click.NoSuchOption as exc:
        _closest(exc).show()
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return parsed


def _closest(exc: click.NoSuchOption) -> click.NoSuchOption:
    """`exc` naming the one option it resembles, if any, compared without dashes: with
    them, every long option resembles every other (click would offer --out for --oz)."""
    if exc.ctx is None:
        return exc
    names = {
        name.lstrip("-"): name
        for param in exc.ctx.command.get_params(exc.ctx)
        for name in param.opts
        if name.startswith("--")
    }
    meant = difflib.get_close_matches(exc.option_name.lstrip("-"), names, n=1)
    return click.NoSuchOption(
        exc.option_name, possibilities=[names[name] for name in meant], ctx=exc.ctx
    )


def configure_logging(log_format: str | None, *, quiet: bool) -> None:
    """structlog: JSON lines for machines, the console renderer for people."""
    import logging

    import orjson

    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # With a progress bar on screen, per-record events would scroll it away: show warnings.
    level = logging.WARNING if quiet else logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # JSON escapes control characters itself; the console renderer does not.
            *([] if fmt == "json" else [escape_log_values]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if fmt == "json"
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )


# Net allocations of container objects between two young-generation collections. CPython's
# default, 700, is less than what a run holds alive at once (a hundred requests in flight,
# each with its record, body, answer and task), so it collected every few records: about
# 12% of a run's CPU, measured. At this threshold a run collects about once every few
# thousand records, and cyclic garbage waiting for it is a few MB at most.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect cyclic garbage at the pace of a run rather than CPython's default."""
    # What start-up built (modules, the parser) lives as long as the process:
    # frozen, it is left out of every later collection instead of traversed by each.
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _install_stop(stop: asyncio.Event) -> None:
    """First Ctrl-C: finish what is on the wire, record the rest as not sent. Second: now."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and task is not None:
            task.cancel()
            return
        stop.set()
        print(
            "\nstopping: finishing requests on the wire (Ctrl-C again to stop now)", file=sys.stderr
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    if isinstance(options, int):
        return options
    with guarded_output() as stderr_loss:
        return _command(options, stderr_loss)


def _command(options: dict[str, Any], stderr_loss: Loss) -> int:
    from wem_der.cli import commands

    try:
        if options["command"] == "simulate":
            from wem_der.simulator import serve
            from wem_der.simulator.cli_args import settings_from_args

            configure_logging(None, quiet=False)
            asyncio.run(serve(settings_from_args(options)))
            return 0
        if options["command"] == "validate":
            return commands.validate(options)
        if options["command"] == "report":
            return asyncio.run(commands.report(options))
        show_progress = sys.stderr.isatty() and not options["no_progress"]
        configure_logging(options["log_format"], quiet=show_progress)
        if options["command"] == "submit" and options["dry_run"]:
            return commands.dry_run(options)
        if options["command"] in ("verify", "export"):
            return asyncio.run(commands.read_register(options, show_progress=show_progress))
        if options["command"] == "followup":
            return asyncio.run(commands.followup(options, show_progress=show_progress))

        tune_gc()

        async def go() -> int:
            progress = Progress() if show_progress else None
            hooks = commands.make_hooks(progress, lost_output=stderr_loss.describe)
            _install_stop(hooks.stop)
            return await commands.run_command(options, hooks, progress)

        return asyncio.run(go())
    except WemDerError as exc:
        print(f"wem-der: {shown(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except ExceptionGroup as group:
        # Raised inside a run's TaskGroup, a deliberate error arrives wrapped; anything
        # else in the group is a bug and keeps its traceback.
        error = one_error(group)
        if error is None:
            raise
        print(f"wem-der: {shown(str(error))}", file=sys.stderr)
        return error.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Stopped outside a run (a run stopped at once says so through StoppedAtOnce).
        print("wem-der: stopped", file=sys.stderr)
        return 3
