"""``foundry``: the one command-line entry point.

Client commands talk to the daemon over gRPC (``--addr``, env ``FOUNDRY_ADDR``), print readable
text by default and JSON with ``--json``, and exit non-zero on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import betterproto2
from foundry.kernel.cli.attest import add_attest_commands
from foundry.kernel.cli.evals import add_eval_commands
from foundry.kernel.cli.export import add_export_command
from foundry.kernel.cli.gates import add_gate_commands
from foundry.kernel.cli.runs import add_run_commands
from foundry.kernel.cli.sql import add_sql_command
from foundry.kernel.config import Config, parse_listen
from foundry.kernel.edge.grpc.client import connect, default_address
from foundry.kernel.errors import ConfigError, FoundryError
from foundry.proto import foundry_api as api
from grpclib import GRPCError

THROTTLES = {"full": api.Throttle.FULL, "audit_only": api.Throttle.AUDIT_ONLY,
             "dry_run": api.Throttle.DRY_RUN}  # fmt: skip


class CommandFailed(Exception):
    """A client command failed; the message is printed, the exit code is 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except (ConfigError, CommandFailed) as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundry", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="foundry.toml to use (default: ./foundry.toml)")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051; port 0 = any)")
    serve.set_defaults(handler=cmd_serve)

    blocks = commands.add_parser("blocks", help="list the blocks the configuration loads")
    blocks.add_argument("--config", help="foundry.toml to use (default: ./foundry.toml)")
    _client_options(blocks, remote=False)
    blocks.set_defaults(handler=cmd_blocks)

    emit = commands.add_parser("emit", help="emit an event (starts a workflow)")
    emit.add_argument("event_type")
    emit.add_argument("--project", required=True)
    emit.add_argument("--throttle", choices=sorted(THROTTLES), default="full")
    emit.add_argument("--payload", default="", help="JSON object")
    _client_options(emit)
    emit.set_defaults(handler=_client(cmd_emit))

    status = commands.add_parser("status", help="in-flight and recent workflows")
    status.add_argument("workflow_id", nargs="?", default="")
    _client_options(status)
    status.set_defaults(handler=_client(cmd_status))

    watch = commands.add_parser("watch", help="stream events live")
    watch.add_argument("--project", default="")
    _client_options(watch)
    watch.set_defaults(handler=_client(cmd_watch))

    trace = commands.add_parser("trace", help="the trace of a completed chain")
    trace.add_argument("event_id")
    _client_options(trace)
    trace.set_defaults(handler=_client(cmd_trace))

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


def cmd_serve(args: argparse.Namespace) -> int:
    from foundry.kernel.daemon import run

    config = Config.load(args.config)
    if args.listen:
        parse_listen(args.listen, key="--listen")
        config = _replace(config, listen=args.listen)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    run(config, on_ready=lambda address: print(address, flush=True))
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from foundry.kernel.blocks.registry import load_config_blocks

    config = Config.load(args.config)
    registry = load_config_blocks(config)
    rows = [
        {"name": b.name, "kind": b.kind.value, "sinks": list(b.sinks), "type": type(b).__name__,
         "timeout": b.timeout, "retries": b.retries, "description": b.description}
        for b in registry
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        sinks = ", ".join(row["sinks"]) or "(step type only)"
        print(f"{row['name']:<28} {row['kind']:<9} sinks: {sinks}")
    return 0


def _replace(config: Config, **changes: Any) -> Config:
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
        except (ConnectionError, OSError) as exc:
            raise CommandFailed(f"cannot reach the daemon at {args.addr}: {exc}") from None
        except FoundryError as exc:
            raise CommandFailed(str(exc)) from None

    return handler


def _print_json(message: betterproto2.Message) -> None:
    print(
        json.dumps(
            message.to_dict(casing=betterproto2.Casing.SNAKE, include_default_values=True), indent=2
        )
    )


async def cmd_emit(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    reply = await foundry.emit(
        api.EmitRequest(
            event_type=args.event_type,
            project=args.project,
            throttle=THROTTLES[args.throttle],
            payload_json=args.payload,
        )
    )
    if args.json:
        print(json.dumps({"event_id": reply.event_id, "workflow_id": reply.workflow_id}))
    else:
        print(f"event    {reply.event_id}")
        print(f"workflow {reply.workflow_id or '(none: no block sinks ' + args.event_type + ')'}")
    return 0


async def cmd_status(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    reply = await foundry.status(api.StatusRequest(workflow_id=args.workflow_id))
    if args.json:
        _print_json(reply)
        return 0
    if not reply.workflows:
        print("no workflows in flight or recently finished")
    for wf in reply.workflows:
        ended = f" → {wf.completed_at}" if wf.completed_at else ""
        print(f"{wf.workflow_id}  {wf.state:<9} {wf.workflow_type} [{wf.project}]  "
              f"{wf.started_at}{ended}")  # fmt: skip
        if wf.error:
            print(f"    error: {wf.error}")
        for b in wf.task_blocks:
            mark = "  (throttled)" if b.throttled else ""
            print(f"    {b.state:<9} {b.name}{mark}")
    return 0


async def cmd_watch(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    async for event in foundry.watch(api.WatchRequest(project=args.project)):
        if args.json:
            print(
                json.dumps(
                    event.to_dict(casing=betterproto2.Casing.SNAKE, include_default_values=True)
                ),
                flush=True,
            )
        else:
            mark = "  (throttled: not delivered)" if event.throttled else ""
            print(f"{event.event_id}  {event.project}  {event.event_type}  "
                  f"{event.payload_json}{mark}", flush=True)  # fmt: skip
    return 0


async def cmd_trace(args: argparse.Namespace, stubs: Any) -> int:
    foundry, _ = stubs
    reply = await foundry.trace(api.TraceRequest(event_id=args.event_id))
    if not reply.found:
        raise CommandFailed(f"no completed trace for {args.event_id}")
    if args.json:
        _print_json(reply)
        return 0
    for e in reply.events:
        mark = "  (throttled)" if e.throttled else ""
        print(f"event  {e.event_id}  {e.event_type}  {e.occurred_at}  {e.payload_json}{mark}")
    for x in reply.block_executions:
        ok = "ok  " if x.success else "FAIL"
        print(f"block  {ok} {x.block_name} on {x.trigger_event_id}  {x.duration_ms} ms  "
              f"[{x.state}] {x.summary}")  # fmt: skip
        for path in x.audit_artifacts:
            print(f"       artifact {path}")
        if x.raw_output:
            for line in x.raw_output.rstrip().splitlines():
                print(f"       | {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
