"""The ``foundry.admin.v1.Admin`` service: the running daemon's own view for operators — its
version, the blocks and tools it loaded at start (``foundry blocks``, ``foundry tools``), and
recent stored events (the backlog of ``foundry watch --since`` and ``foundry trace --follow``).

Recent events are read from the store's sandboxed read cursor (``RunUserQuery``, as saved
questions are), with this module's one fixed, parameterized statement.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.store.messages import LoadRecentEvents
from foundry.kernel.blocks.api import Block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.blocks.tools import Tool
from foundry.kernel.config import Config
from foundry.kernel.core.ids import rfc3339
from foundry.kernel.core.since import parse_since
from foundry.kernel.edge.grpc.server import ask
from foundry.proto import admin_api as api
from grpclib import GRPCError
from grpclib.const import Status

DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
# A reply holds at least the newest event, whatever its payload: a payload is at most
# ``max_message_bytes``; the budget (as when the events were read as JSON rows, where a control
# character took six bytes) leaves room for many.
JSON_GROWTH = 6


class AdminService(api.AdminBase):
    def __init__(
        self, mailboxes: Mailboxes, config: Config, registry: BlockRegistry, listen: str
    ) -> None:
        self._mail = mailboxes
        self._reply_bytes = max(
            config.analytics.max_reply_bytes, JSON_GROWTH * config.max_message_bytes + (1 << 20)
        )
        self._started_at = rfc3339(datetime.now(UTC))
        self._version = api.GetVersionResponse(
            version=distribution_version(),
            config=config.source,
            home=str(config.home),
            started_at=self._started_at,
            listen=listen,
        )
        self._blocks = [_block_info(b, declared_sources(config)) for b in registry]
        self._tools = [_tool_info(t) for t in sorted(registry.tools.values(), key=_name)]

    async def get_version(self, message: api.GetVersionRequest) -> api.GetVersionResponse:
        return self._version

    async def list_blocks(self, message: api.ListBlocksRequest) -> api.ListBlocksResponse:
        return api.ListBlocksResponse(blocks=self._blocks)

    async def list_tools(self, message: api.ListToolsRequest) -> api.ListToolsResponse:
        return api.ListToolsResponse(tools=self._tools)

    async def list_events(self, message: api.ListEventsRequest) -> api.ListEventsResponse:
        try:
            since = parse_since(message.since, datetime.now(UTC))
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        if len(message.project) > 256 or len(message.workflow_id) > 256:
            raise _invalid("project/workflow_id: longer than 256 characters")
        limit = min(message.limit or DEFAULT_EVENTS, MAX_EVENTS)
        rows, truncated = await ask(
            self._mail.store,
            lambda r: LoadRecentEvents(
                since, message.project, message.workflow_id, limit, self._reply_bytes, r
            ),
        )
        return api.ListEventsResponse(
            events=[_event(row) for row in reversed(rows)], truncated=truncated
        )


def distribution_version() -> str:
    try:
        return metadata.version("foundry")
    except metadata.PackageNotFoundError:
        return "unknown"


def declared_sources(config: Config) -> dict[str, str]:
    """Where each ``[[blocks]]`` table's block comes from, by block name."""
    return {
        str(t["name"]): f"{t.get('__source__', config.source)} [[blocks]] (type {t['type']})"
        for t in config.declared_blocks
    }


def _block_info(block: Block, declared: dict[str, str]) -> api.BlockInfo:
    return api.BlockInfo(
        name=block.name,
        kind=block.kind.value,
        sinks=list(block.sinks),
        type=type(block).__name__,
        source=block_source(block, declared),
        description=block.description,
        timeout_seconds=block.timeout or 0.0,
        retries=block.retries,
    )


def block_source(block: Block, declared: dict[str, str]) -> str:
    """The config file's ``[[blocks]]`` table, else the module defining the block (a decorated
    function's module, not the decorator's)."""
    function = getattr(block, "_fn", None)  # FunctionBlock: the function the plugin wrote
    module = getattr(function, "__module__", None) or type(block).__module__
    return declared.get(block.name) or str(module)


def _tool_info(tool: Tool) -> api.ToolInfo:
    source = getattr(tool.fn, "__module__", None) or ""
    return api.ToolInfo(name=tool.name, source=source, description=tool.description)


def _name(tool: Tool) -> str:
    return tool.name


def _event(row: list[Any]) -> api.Event:
    event_id, event_type, project, occurred_us, workflow_id, throttle, throttled, payload, by = row[
        :9
    ]
    trace_id, span_id, parent_span_id = row[9:12]
    occurred = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(occurred_us))
    return api.Event(
        event_id=event_id,
        event_type=event_type,
        project=project,
        occurred_at=rfc3339(occurred),
        workflow_id=workflow_id,
        throttle=throttle,
        throttled=bool(throttled),
        payload_json=payload,
        emitted_by=by,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
    )


def _invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)
