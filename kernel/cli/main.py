"""``foundry``: the one command-line entry point.

Client commands talk to the daemon over gRPC (``--addr``, env ``FOUNDRY_ADDR``), print readable
text by default and JSON with ``--json``, and exit non-zero on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import betterproto2
from foundry.kernel.cli.attest import add_attest_commands
from foundry.kernel.cli.common import daemon_unreachable, read_text_file, whole_number
from foundry.kernel.cli.config_check import add_config_commands
from foundry.kernel.cli.evals import add_eval_commands
from foundry.kernel.cli.export import add_export_command
from foundry.kernel.cli.follow import add_wait_options, wait_and_print
from foundry.kernel.cli.gates import add_gate_commands
from foundry.kernel.cli.inventory import add_inventory_commands
from foundry.kernel.cli.live import add_live_commands
from foundry.kernel.cli.output import (
    OutputFailed,
    plain,
    print_json,
    reported,
    stamp,
    terminal_safe,
    verdict_reported,
)
from foundry.kernel.cli.runs import add_run_commands
from foundry.kernel.cli.sql import add_sql_command
from foundry.kernel.config import Config, parse_listen
from foundry.kernel.core.tracecontext import TraceContextError, parse_traceparent
from foundry.kernel.edge.grpc.client import connect, default_address
from foundry.kernel.errors import ConfigError, FoundryError
from foundry.proto import foundry_api as api
from grpclib import GRPCError

THROTTLES = {"full": api.Throttle.FULL, "audit_only": api.Throttle.AUDIT_ONLY,
             "dry_run": api.Throttle.DRY_RUN}  # fmt: skip


class CommandFailed(Exception):
    """A client command failed; the message is printed, the exit code is 1."""


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    with terminal_safe(stdout=False, guard=False):  # argparse quotes a bad argument raw
        args = build_parser().parse_args(client_options_last(given))
    if args.handler is cmd_serve:  # the daemon's own output: its address line, its log
        return _run(args, given)
    # Text for a person (not a --json or --csv document sent down a pipe) shows the control
    # characters client-stored text holds as escapes.
    document = getattr(args, "json", False) or getattr(args, "csv", False)
    with terminal_safe(stdout=not document or sys.stdout.isatty()):
        return _run(args, given)


def _run(args: argparse.Namespace, given: list[str]) -> int:
    reported(0)  # (a verdict of a command before, in this process, is not this one's)
    try:
        result: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return result
    except BrokenPipeError:
        _stdout_closed()
        return verdict_reported()  # (0 but for a verdict: DENY, INVALID, a failed eval)
    except OutputFailed as exc:
        print(f"foundry: cannot write the output: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, CommandFailed) as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except UnicodeEncodeError:
        # bytes of argv that are not UTF-8 (surrogate escapes): they reach the wire only as text
        bad = next((a for a in given if not _utf8(a)), None)
        if bad is None:
            raise
        print(f"foundry: argument {ascii(bad)[:100]} is not valid UTF-8 text", file=sys.stderr)
        return 2
    except RecursionError:  # JSON in an argument (--inputs, --details), a file, or a reply
        print("foundry: JSON nested too deeply to read", file=sys.stderr)
        return 2


def client_options_last(argv: list[str]) -> list[str]:
    """``foundry --addr H:P status`` read as ``foundry status --addr H:P``: the options every
    client command takes, given before the command, go after it (argparse said
    ``invalid choice: 'H:P'``, naming no option)."""
    moved: list[str] = []
    while argv and (argv[0] in ("--addr", "--json") or argv[0].startswith("--addr=")):
        take = 2 if argv[0] == "--addr" else 1
        moved, argv = moved + argv[:take], argv[take:]
    return argv + moved


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stdout_closed() -> None:
    """The reader of our output went away (``foundry status | head -1``): that is not an error.
    Python would report the broken pipe again when it flushes stdout at exit, so stdout now
    points at devnull (the Python docs' "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundry", description=plain(__doc__.splitlines()[0]))
    parser.add_argument("--version", action="version", version=f"foundry {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="foundry.toml to use (default: ./foundry.toml)")
    serve.add_argument(
        "--listen", help="HOST:PORT (default: [daemon] listen, else 127.0.0.1:50051; port 0 = any)"
    )
    serve.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP listener (Connect, gRPC-Web, WebSocket; default: [http] "
        "listen, else 127.0.0.1:50052; port 0 = any), or off",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="the daemon log on stderr: text lines, or one JSON object per line",
    )
    serve.set_defaults(handler=cmd_serve)

    emit = commands.add_parser("emit", help="emit an event (starts a workflow)")
    emit.add_argument("event_type")
    emit.add_argument("--project", required=True)
    emit.add_argument("--throttle", choices=sorted(THROTTLES), default="full")
    emit.add_argument(
        "--payload", default="", help="JSON object; @FILE reads it from a file, - from stdin"
    )
    add_wait_options(emit)
    _client_options(emit)
    emit.set_defaults(handler=_client(cmd_emit))

    status = commands.add_parser(
        "status", help="workflows newest first: in flight, and finished ones (from the database)"
    )
    status.add_argument("workflow_id", nargs="?", default="")
    status.add_argument("--project", dest="status_project", default="", metavar="PROJECT",
                        help="only this project's workflows")  # fmt: skip
    status.add_argument("--state", default="", help="only workflows in this state",
                        choices=("pending", "running", "completed", "failed"))  # fmt: skip
    status.add_argument("--limit", type=lambda s: whole_number(s, maximum=1000), default=20,
                        help="at most this many (default 20, at most 1000)")  # fmt: skip
    _client_options(status)
    status.set_defaults(handler=_client(cmd_status))

    add_live_commands(commands, _client, _client_options)
    add_inventory_commands(commands, _client_options)
    add_config_commands(commands)
    add_run_commands(commands, _client, _client_options)
    add_eval_commands(commands)
    add_gate_commands(commands)
    add_export_command(commands)
    add_attest_commands(commands)
    add_sql_command(commands)
    return parser


def _client_options(parser: argparse.ArgumentParser, *, remote: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    if remote:
        parser.add_argument("--addr", default=default_address(), help="daemon HOST:PORT")


# --- serve and blocks (local) -------------------------------------------------------------------


def _announce(addresses: str) -> None:
    """The ready line, stdout's only one: what plugins print from then on goes to stderr, as
    what they print while they load does. A caller reads stdout for the ready line alone, and a
    block printing 1 MB to a pipe no one read held the daemon's loop in ``write`` for good."""
    print(addresses, flush=True)
    # (no such file descriptors, say under a test's capture: as they are)
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def cmd_serve(args: argparse.Namespace) -> int:
    from foundry.kernel.daemon import run

    config = Config.load(args.config)
    if args.listen is not None:  # ("": refused, not the file's)
        parse_listen(args.listen, key="--listen")
        config = _replace(config, listen=args.listen, listen_from="--listen")
    if args.http_listen is not None:
        if args.http_listen != "off":
            parse_listen(args.http_listen, key="--http-listen")
        config = _replace(config, http=_replace(config.http, listen=args.http_listen),
                          http_listen_from="--http-listen")  # fmt: skip
    configure_logging(args.log_format)
    run(config, on_ready=_announce)
    _leave_left_threads()
    return 0


EXIT_GRACE = 5.0  # seconds the interpreter's exit may wait for threads a block left


def _leave_left_threads(grace: float = EXIT_GRACE) -> None:
    """After a stop the interpreter's exit waits for every thread that is not a daemon one (a
    pool's idle workers are woken and joined, its queued work done, atexit handlers run): one a
    block left running for ever kept the stopped daemon's process alive. A watchdog ends the
    process once that exit has taken ``grace`` seconds."""
    import threading
    import time

    def watchdog() -> None:
        time.sleep(grace)
        main = threading.main_thread()
        left = [t for t in threading.enumerate() if not t.daemon and t is not main]
        names = ", ".join(sorted({t.name for t in left})[:5])
        logging.getLogger("foundry.daemon").warning(
            "exiting without %d thread(s) a block left running (%s)", len(left), names
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=watchdog, name="foundry-exit-watchdog", daemon=True).start()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("foundry")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def configure_logging(log_format: str) -> None:
    from foundry.kernel.cli.logs import JsonFormatter, TextFormatter, quiet_disconnects

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    quiet_disconnects()


def _replace(config: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(config, **changes)


# --- client commands ----------------------------------------------------------------------------

ClientCommand = Callable[[argparse.Namespace, Any], Awaitable[int]]


def _client(command: ClientCommand) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        async def call() -> int:
            async with connect(args.addr) as stubs:
                return await command(args, stubs)

        try:
            return asyncio.run(call())
        except GRPCError as exc:
            raise CommandFailed(f"{exc.status.name}: {exc.message}") from None
        except BrokenPipeError:
            raise  # our reader went away (main handles it), not the daemon
        except (ConnectionError, OSError) as exc:
            raise CommandFailed(daemon_unreachable(args.addr, exc)) from None
        except ConfigError:
            raise  # a bad --addr: exit 2, as every command says it
        except FoundryError as exc:
            raise CommandFailed(str(exc)) from None

    return handler


def _print_json(message: betterproto2.Message) -> None:
    print_json(message)


async def cmd_emit(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    trace_id, parent_span_id = _caller_trace()
    reply = await foundry.emit(
        api.EmitRequest(
            event_type=args.event_type,
            project=args.project,
            throttle=THROTTLES[args.throttle],
            payload_json=read_payload(args.payload),
            trace_id=trace_id,
            parent_span_id=parent_span_id,
        )
    )
    if args.wait:
        return await wait_and_print(foundry, reply, limit=args.timeout, as_json=args.json)
    if args.json:
        print(json.dumps({"event_id": reply.event_id, "workflow_id": reply.workflow_id}))
    else:
        print(f"event    {reply.event_id}")
        print(f"workflow {reply.workflow_id or '(none: no block sinks ' + args.event_type + ')'}")
    return 0


def _caller_trace() -> tuple[str, str]:
    """The caller's W3C trace context from ``TRACEPARENT`` (as OpenTelemetry's environment
    carrier sets it): the emitted event joins that trace as a child of the caller's span.
    ``("", "")`` when unset: the daemon starts a new trace."""
    value = os.environ.get("TRACEPARENT", "")
    if not value.strip():
        return "", ""
    try:
        return parse_traceparent(value)
    except TraceContextError as exc:
        raise CommandFailed(str(exc)) from None


def read_payload(text: str) -> str:
    """``--payload``: JSON text, ``@FILE`` (the file's content) or ``-`` (standard input)."""
    try:
        if text == "-" or text.startswith("@"):
            return read_text_file(text[1:] if text.startswith("@") else "-")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CommandFailed(f"--payload: cannot read {text[1:] or 'stdin'}: {reason}") from None
    return text


async def cmd_status(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    reply = await foundry.status(
        api.StatusRequest(workflow_id=args.workflow_id, project=args.status_project,
                          state=args.state, limit=args.limit)
    )  # fmt: skip
    if args.json:
        _print_json(reply)
        return 0
    if not reply.workflows:
        print("no workflows in flight or recently finished")
    for wf in reply.workflows:
        ended = f" → {stamp(wf.completed_at)}" if wf.completed_at else ""
        print(f"{wf.workflow_id}  {wf.state:<9} {wf.workflow_type} [{wf.project}]  "
              f"{stamp(wf.started_at)}{ended}")  # fmt: skip
        if wf.error:
            print(f"    error: {wf.error}")
        for b in wf.task_blocks:
            mark = "  (throttled)" if b.throttled else ""
            print(f"    {b.state:<9} {b.name}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
