"""``foundry blocks`` and ``foundry tools``: what the running daemon loaded (``Admin.ListBlocks``,
``Admin.ListTools``), or — when no daemon answers — what the configuration would load. A line on
stderr says which. Plugins are loaded once, at start: a newly installed one shows in the
daemon's view after a restart."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from foundry.kernel.cli.output import note, plain
from foundry.kernel.config import Config
from foundry.kernel.edge.grpc.client import connect
from foundry.proto import admin_api
from grpclib import GRPCError
from grpclib.exceptions import ProtocolError, StreamTerminatedError

ASK_TIMEOUT = 5.0  # seconds: a daemon that does not answer by then counts as not reachable

Rows = list[dict[str, Any]]


def add_inventory_commands(commands: Any, client_options: Any) -> None:
    for name, help_text, handler in (
        ("blocks", "the blocks the running daemon loaded (else the config's)", cmd_blocks),
        ("tools", "the tools plugins registered, for the tool step type", cmd_tools),
    ):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--config", help="offline: foundry.toml to load (default: ./foundry.toml)"
        )
        client_options(parser)
        parser.set_defaults(handler=handler)


def cmd_blocks(args: argparse.Namespace) -> int:
    rows = _daemon_or_config(args, _daemon_blocks, _config_blocks)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        sinks = ", ".join(row["sinks"]) or "(step type only)"
        about = _about(row["description"])
        print(f"{row['name']:<28} {row['kind']:<9} sinks: {sinks}  [{row['source']}]{about}")
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    rows = _daemon_or_config(args, _daemon_tools, _config_tools)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no tools registered")
    for row in rows:
        about = _about(row["description"])
        print(f"{row['name']:<28} [{row['source']}]{about}")
    return 0


def _about(description: str) -> str:
    """A description's first line (a block's docstring runs on: one line a block, as the README
    shows them; ``--json`` has the whole text)."""
    lines = description.strip().splitlines()
    return f" — {plain(lines[0].strip())}" if lines else ""


def _daemon_or_config(
    args: argparse.Namespace,
    from_daemon: Callable[[Any], Any],
    from_config: Callable[[Config], Rows],
) -> Rows:
    try:
        config_source, rows = asyncio.run(_ask(args.addr, from_daemon))
    except (OSError, GRPCError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        config = Config.load(args.config)
        note(f"daemon not reachable at {args.addr} ({_reason(exc)}); from the config "
             f"{config.source}, which a daemon started now would load")  # fmt: skip
        return from_config(config)
    note(f"from the running daemon at {args.addr} (config {config_source})")
    return rows


def _reason(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return f"no answer in {ASK_TIMEOUT:g} s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def _ask(address: str, ask: Callable[[Any], Any]) -> tuple[str, Rows]:
    async with connect(address) as stubs:
        admin = admin_api.AdminStub(stubs[0].channel, timeout=ASK_TIMEOUT)
        version = await admin.get_version(admin_api.GetVersionRequest())
        rows: Rows = await ask(admin)
        return version.config, rows


async def _daemon_blocks(admin: Any) -> Rows:
    reply = await admin.list_blocks(admin_api.ListBlocksRequest())
    return [
        {"name": b.name, "kind": b.kind, "sinks": list(b.sinks), "type": b.type,
         "source": b.source, "timeout": b.timeout_seconds or None, "retries": b.retries,
         "description": b.description}
        for b in reply.blocks
    ]  # fmt: skip


async def _daemon_tools(admin: Any) -> Rows:
    reply = await admin.list_tools(admin_api.ListToolsRequest())
    return [{"name": t.name, "source": t.source, "description": t.description} for t in reply.tools]


def _config_blocks(config: Config) -> Rows:
    # Here, not at the top: the daemon's side of the admin service is ~0.3 s of imports that
    # every other command would pay for.
    from foundry.kernel.blocks.registry import load_config_blocks
    from foundry.kernel.edge.grpc.admin_service import block_source, declared_sources

    declared = declared_sources(config)
    return [
        {"name": b.name, "kind": b.kind.value, "sinks": list(b.sinks), "type": type(b).__name__,
         "source": block_source(b, declared), "timeout": b.timeout, "retries": b.retries,
         "description": b.description}
        for b in load_config_blocks(config)
    ]  # fmt: skip


def _config_tools(config: Config) -> Rows:
    from foundry.kernel.blocks.registry import load_config_blocks

    tools = sorted(load_config_blocks(config).tools.values(), key=lambda t: t.name)
    return [
        {"name": t.name, "source": getattr(t.fn, "__module__", "") or "",
         "description": t.description}
        for t in tools
    ]  # fmt: skip
