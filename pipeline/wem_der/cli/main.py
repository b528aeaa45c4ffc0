"""`wem-der`: argument parsing, logging set-up and exit codes; no business logic.

Exit codes: 0 every record accepted, conditional or skipped; 1 any rejected, invalid or
failed; 2 a usage or configuration error, or a ledger or outcome file that cannot be
written; 3 the run was aborted (credentials refused, client misconfigured, interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import gc
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from wem_der import __version__
from wem_der.cli.guarded_output import Loss, guarded_output
from wem_der.cli.progress import Progress
from wem_der.errors import WemDerError
from wem_der.report.display import escape_log_values, shown

# argparse's own errors that come before, and so hide, an unknown option.
_HIDING_ERRORS = ("the following arguments are required", "unrecognized arguments")


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: a mistyped option is the error it reports, with the option
    it resembles.

    argparse checks required arguments before unknown ones: for `submit in.jsonl --outt x`
    it would say only that --out is missing, and never name the typo. Neither message
    echoes a value: it may be a secret (`--client-secrett=...`).
    """

    _given: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # The top-level parser calls this with the subcommand's own arguments.
        self._given = list(args or ())
        parsed, extras = super().parse_known_args(args, namespace)
        unknown = self._unknown_options()
        if unknown:
            super().error(self._mistyped(unknown[0]))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options()
        # Only where argparse's own words would hide the typo: its other errors are about
        # a known option's value, which is not echoed.
        if unknown and message.startswith(_HIDING_ERRORS):
            message = self._mistyped(unknown[0])
        super().error(message)

    def _mistyped(self, name: str) -> str:
        # Compared without dashes, or every long option resembles every other.
        names = {option.lstrip("-"): option for option in self._option_string_actions}
        meant = difflib.get_close_matches(name.lstrip("-"), names, n=1)
        return f"unrecognized option {name}" + (
            f" (did you mean {names[meant[0]]}?)" if meant else ""
        )

    def _unknown_options(self) -> list[str]:
        known = self._option_string_actions
        unknown = []
        for arg in self._given:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            # What argparse itself takes for a negative number, by its own pattern.
            if not name.startswith("-") or name == "-" or self._negative_number_matcher.match(name):
                continue
            # allow_abbrev: argparse takes the prefix of one option for that option.
            if name not in known and not any(option.startswith(name) for option in known):
                unknown.append(name)
        return unknown


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("environment (each also WEMDER_<NAME>, e.g. WEMDER_BASE_URL)")
    g.add_argument("--env", default=None, help="profile in config/: local (default), preprod, prod")
    g.add_argument("--config-dir", type=Path, help="read profiles from here instead of the package")
    g.add_argument("--base-url", help="Installation v2 base URL; no simulator is started when set")
    g.add_argument("--nmi-base-url", help="NMI v1 base URL")
    g.add_argument("--token-url", help="OAuth token URL")
    g.add_argument("--client-id")
    g.add_argument("--client-secret", help="better: WEMDER_CLIENT_SECRET or --client-secret-file")
    g.add_argument("--client-secret-file", type=Path, help="a file whose first line is the secret")
    g.add_argument("--participant-id", help="sent as X-initiatingParticipantID")
    g.add_argument("--state-dir", type=Path, help="where the ledger lives (default .wem-der)")
    t = parser.add_argument_group("transport")
    t.add_argument("--rate-limit", help="quota as COUNT/PERIOD, e.g. 6000/60s (default) or 300/3s")
    t.add_argument("--concurrency", type=int, help="workers (default: derived from the quota)")
    t.add_argument("--action", choices=["create", "update", "upsert"])
    t.add_argument("--compression", choices=["gzip", "deflate", "none"])
    t.add_argument("--timeout-s", type=float, help="per request")
    t.add_argument("--max-attempts", type=int, help="per record, retries included")
    t.add_argument("--client-cert", type=Path, help="PEM client certificate for mutual TLS")
    t.add_argument("--client-key", type=Path, help="PEM private key of --client-cert")
    t.add_argument("--ca-file", type=Path, help="PEM CA bundle that signs the server")
    t.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="do not verify the server's certificate (refused by the prod profile)",
    )
    t.add_argument(
        "--allow-unknown-fields",
        action="store_true",
        default=None,
        help="send fields the record shapes do not know instead of refusing the record",
    )


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=["console", "json"], help="default: console on a terminal"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wem-der", description="Bulk submission of records to AEMO's WEM DER Register."
    )
    parser.add_argument("--version", action="version", version=f"wem-der {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    p = sub.add_parser("submit", help="send records from files to the register")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="JSONL or JSON array, .gz ok, - for stdin"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="outcome directory: new, or a finished run's (whose files this run replaces)",
    )
    p.add_argument("--kind", choices=["installation", "nmi"], default="installation")
    p.add_argument("--force", action="store_true", help="send records unchanged since last time")
    p.add_argument("--dry-run", action="store_true", help="validate and estimate; no network")
    _settings_flags(p)
    _output_flags(p)

    p = sub.add_parser("validate", help="pre-flight records locally; no network")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--kind", choices=["installation", "nmi"], default="installation")
    p.add_argument("--allow-unknown-fields", action="store_true", default=None)
    p.add_argument("--env", default=None)
    p.add_argument("--config-dir", type=Path)

    reuse = (
        "Settings (endpoints, client id, participant, quota, state directory...) are those "
        "recorded for RUN in its run.json; flags given here override them. The client "
        "secret is never recorded: give it again (WEMDER_CLIENT_SECRET or "
        "--client-secret-file). RUN_ID is looked up in the ledger of --state-dir "
        "(default .wem-der); a DIR needs no --state-dir."
    )
    p = sub.add_parser(
        "resume",
        help="continue a stopped or killed run into its outcome directory",
        description="Continue a stopped or killed run into the same outcome directory. "
        "Records with a final outcome are not sent again; records whose request was on the "
        "wire when the run died are first read back from the register and sent only if it "
        "lacks them. " + reuse + " The inputs, --out, --kind and --force of `submit` may "
        "be repeated; they must then be the run's.",
    )
    p.add_argument("run", metavar="RUN_ID|DIR")
    p.add_argument("paths", nargs="*", metavar="PATH", help="(optional) the run's inputs")
    p.add_argument("--out", type=Path, help="(optional) the run's outcome directory")
    p.add_argument("--kind", choices=["installation", "nmi"], help="(optional) the run's kind")
    p.add_argument("--force", action="store_true", default=None, help="(optional) as the run")
    _settings_flags(p)
    _output_flags(p)

    p = sub.add_parser(
        "resubmit",
        help="send chosen records of an earlier run again",
        description="Send again the records of RUN whose outcome is one of --only, as a new "
        "run linked to RUN (always sent, even if unchanged). With --with, only those of "
        "them that FILE has a corrected version of (matched by NMI) are sent, that version, "
        "and a field-level diff of each is printed. " + reuse,
    )
    p.add_argument("run", metavar="RUN_ID|DIR")
    p.add_argument(
        "--only", default="failed,rejected", help="outcomes to send again (default failed,rejected)"
    )
    p.add_argument(
        "--with",
        dest="corrected",
        type=Path,
        metavar="FILE",
        help="corrected records, matched by NMI; only the chosen records found here are sent",
    )
    p.add_argument("--out", type=Path, help="outcome directory (default: beside the original)")
    _settings_flags(p)
    _output_flags(p)

    p = sub.add_parser("report", help="summarise a run, or the history of one NMI")
    p.add_argument("run", metavar="RUN_ID|DIR", nargs="?")
    p.add_argument("--nmi", help="history of this NMI across runs")
    p.add_argument("--kind", choices=["installation", "nmi"], default="installation")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--state-dir", type=Path, help="the ledger's directory (default .wem-der)")
    p.add_argument("--env", default=None)
    p.add_argument("--config-dir", type=Path)

    from wem_der.simulator.cli_args import add_arguments

    p = sub.add_parser("simulate", help="serve the local simulator of the register")
    add_arguments(p)
    return parser


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


def _first_leaf(group: ExceptionGroup[WemDerError]) -> WemDerError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, ExceptionGroup) else first


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with guarded_output() as stderr_loss:
        return _command(args, stderr_loss)


def _command(args: argparse.Namespace, stderr_loss: Loss) -> int:
    from wem_der.cli import commands

    try:
        if args.command == "simulate":
            from wem_der.simulator import serve
            from wem_der.simulator.cli_args import settings_from_args

            configure_logging(None, quiet=False)
            asyncio.run(serve(settings_from_args(args)))
            return 0
        if args.command == "validate":
            return commands.validate(args)
        if args.command == "report":
            return asyncio.run(commands.report(args))
        show_progress = sys.stderr.isatty() and not args.no_progress
        configure_logging(args.log_format, quiet=show_progress)
        if args.command == "submit" and args.dry_run:
            return commands.dry_run(args)

        tune_gc()

        async def go() -> int:
            progress = Progress() if show_progress else None
            hooks = commands.make_hooks(progress, lost_output=stderr_loss.describe)
            _install_stop(hooks.stop)
            return await commands.run_command(args, hooks, progress)

        return asyncio.run(go())
    except WemDerError as exc:
        print(f"wem-der: {shown(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except ExceptionGroup as group:
        # Raised inside a run's TaskGroup, a deliberate error arrives wrapped; anything
        # else in the group is a bug and keeps its traceback.
        matched, rest = group.split(WemDerError)
        if matched is None or rest is not None:
            raise
        first = _first_leaf(matched)
        print(f"wem-der: {shown(str(first))}", file=sys.stderr)
        return first.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Stopped outside a run (a run stopped at once says so through StoppedAtOnce).
        print("wem-der: stopped", file=sys.stderr)
        return 3
