"""The ``foundry.admin.v1.Admin`` service against a real daemon: its version, the blocks and tools
it loaded (with where each came from), and stored events with their filters."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from importlib import metadata

import pytest
from foundry.kernel.edge.grpc.client import connect
from foundry.proto import admin_api as api
from grpclib import GRPCError
from grpclib.const import Status

from tests.e2e.helpers import emit, finished

CONFIG = """
[[blocks]]
name = "Say Done"
type = "shell"
kind = "observer"
sinks = ["chore_requested"]
command = ["sh", "-c", "echo done"]
emits = "chore_done"
description = "says it is done"
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(CONFIG)


def admin(daemon, call):
    async def go():
        async with connect(daemon.address) as (foundry, _):
            return await call(api.AdminStub(foundry.channel))

    return asyncio.run(go())


def test_version_names_the_distribution_config_and_home(daemon):
    reply = admin(daemon, lambda a: a.get_version(api.GetVersionRequest()))
    assert reply.version == metadata.version("foundry")
    assert reply.config == str(daemon.config)
    assert reply.home == str(daemon.home)
    assert reply.listen == daemon.address
    started = datetime.fromisoformat(reply.started_at)
    assert timedelta(0) <= datetime.now(UTC) - started < timedelta(minutes=10)


def test_blocks_are_what_the_daemon_loaded_with_their_source(daemon):
    reply = admin(daemon, lambda a: a.list_blocks(api.ListBlocksRequest()))
    blocks = {b.name: b for b in reply.blocks}
    declared = blocks["Say Done"]
    assert declared.sinks == ["chore_requested"]
    assert declared.kind == "observer"
    assert declared.source == f"{daemon.config} [[blocks]] (type shell)"
    assert declared.description == "says it is done"
    compose = blocks["Compose Greeting"]  # a built-in plugin's decorated function
    assert compose.source == "foundry.plugins.greeting"
    assert compose.kind == "observer"
    assert blocks["Deliver Greeting"].kind == "mutator"
    assert blocks["shell"].sinks == []  # a step type only


def test_tools_are_listed_by_name_with_their_module(daemon):
    reply = admin(daemon, lambda a: a.list_tools(api.ListToolsRequest()))
    tools = {t.name: t for t in reply.tools}
    assert [t.name for t in reply.tools] == sorted(tools)
    assert tools["echo"].source == "foundry.plugins.tool"
    assert tools["echo"].description


def test_events_filtered_by_project_chain_and_time(daemon):
    before = datetime.now(UTC) - timedelta(milliseconds=5)
    roots = []
    for n in (1, 2):  # one after the other: the order of the answer is the order they happened
        roots.append(emit(daemon, "chore_requested", project="admin-ev", payload={"n": n}))
        finished(daemon, roots[-1].workflow_id)
    emit(daemon, "unrelated", project="elsewhere")

    def events(**fields):
        request = api.ListEventsRequest(**fields)
        return admin(daemon, lambda a: a.list_events(request))

    mine = events(project="admin-ev", since=before.isoformat())
    assert [(e.event_type, e.workflow_id) for e in mine.events] == [
        ("chore_requested", roots[0].workflow_id), ("chore_done", roots[0].workflow_id),
        ("chore_requested", roots[1].workflow_id), ("chore_done", roots[1].workflow_id),
    ]  # fmt: skip
    first = mine.events[0]
    assert first.payload_json == '{"n":1}'
    assert first.throttle == "full"
    assert first.emitted_by == ""
    assert mine.events[1].emitted_by == "Say Done"
    assert first.occurred_at.endswith("+00:00")
    assert not mine.truncated

    chain = events(workflow_id=roots[1].workflow_id)
    assert [e.event_type for e in chain.events] == ["chore_requested", "chore_done"]

    newest = events(project="admin-ev", since=before.isoformat(), limit=1)
    assert [e.event_type for e in newest.events] == ["chore_done"]
    assert newest.truncated

    assert len(events(project="admin-ev", since="1h").events) == 4
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert events(project="admin-ev", since=future).events == []


@pytest.mark.parametrize("since", ["yesterday", "5 parsecs", "2026-13-01T00:00:00Z", "1y"])
def test_a_bad_since_is_invalid_argument_naming_the_field(daemon, since):
    with pytest.raises(GRPCError) as caught:
        admin(daemon, lambda a: a.list_events(api.ListEventsRequest(since=since)))
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message.startswith("since: ")
    # The daemon is still there.
    assert admin(daemon, lambda a: a.get_version(api.GetVersionRequest())).version


def test_hostile_filters_are_plain_values_not_sql(daemon):
    request = api.ListEventsRequest(project="x' OR '1'='1", workflow_id="'; DROP TABLE events; --")
    assert admin(daemon, lambda a: a.list_events(request)).events == []
    huge = api.ListEventsRequest(project="p" * 10_000)
    with pytest.raises(GRPCError) as caught:
        admin(daemon, lambda a: a.list_events(huge))
    assert caught.value.status is Status.INVALID_ARGUMENT


def test_events_past_the_reply_limit_leave_out_the_oldest(make_daemon):
    """ListEvents' reply is bounded (6 × max_message_bytes + 1 MiB here: 1.1 MB): 100 events of
    15 KB do not fit, and the newest are kept, the oldest left out, ``truncated`` set. (Its
    rows came oldest first under the byte limit: the newest were dropped, unsaid.)"""
    small = make_daemon(
        "[daemon]\nmax_message_bytes = 16384\n[analytics]\nmax_reply_bytes = 65536\n"
    )
    for n in range(100):
        emit(small, "nobody_listens", project="admin-big", payload={"n": n, "pad": "x" * 15_000})
    listed = admin(small, lambda a: a.list_events(api.ListEventsRequest(project="admin-big",
                                                                         limit=100)))  # fmt: skip
    numbers = [json.loads(e.payload_json)["n"] for e in listed.events]
    assert 50 < len(numbers) < 100
    assert numbers == list(range(100 - len(numbers), 100))  # the newest, oldest first
    assert listed.truncated
