"""Crash safety of the store's journal (issue 17, item 2), with real daemon processes:
``kill -9`` at random points under load, a torn tail record, a corrupt or missing middle
segment, and reads that stay current while DuckDB lags behind the journal."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import signal
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from foundry.kernel.actors.store.journal import RECORD_HEADER, SEGMENT_HEADER, encode
from foundry.kernel.edge.grpc.client import connect
from foundry.proto import foundry_api as api
from foundry.proto import runtime_api as rapi
from grpclib import GRPCError
from grpclib.exceptions import StreamTerminatedError

from tests.e2e.helpers import emit, finished, status, trace
from tests.e2e.journal_helpers import (
    GroupDaemon,
    applied_mark,
    database_rows,
    digests,
    journaled,
    lagging_records,
    records_end,
    refused_start,
    segments,
    sql,
    store_config,
)
from tests.helpers import wait_until

ROUNDS = 50
IN_FLIGHT = 8  # Emits pipelined on one connection at once
# Two tool steps (mutators: each lease durable before the tool runs), the second after the first.
ECHO_CHAIN = json.dumps(
    {
        "steps": [
            {"id": "a", "type": "tool", "inputs": {"tool": "echo", "args": {"n": 1}}},
            {
                "id": "b",
                "type": "tool",
                "inputs": {"tool": "echo", "args": {"a": "${steps.a.output.n}"}},
            },
        ]
    }
)
# What a connection to a daemon that was just killed fails with.
CONNECTION_LOST = (GRPCError, StreamTerminatedError, OSError, asyncio.TimeoutError)


@pytest.fixture
def group_daemons(tmp_path: Path) -> Iterator[Callable[[str, Path], GroupDaemon]]:
    """``make(name, config)``: a daemon (not started) whose home is ``tmp_path/<name>-home``;
    every one is killed (its whole process group) at the end."""
    made: list[GroupDaemon] = []

    def make(name: str, config: Path) -> GroupDaemon:
        daemon = GroupDaemon(tmp_path / f"{name}-home", config)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.close()


# --- 1. kill -9 x 50 under load -------------------------------------------------------------------


@dataclass
class Acked:
    events: dict[str, int] = field(default_factory=dict)  # event id -> round
    runs: dict[str, int] = field(default_factory=dict)  # run id -> round


@dataclass
class Round:
    number: int
    delay: float
    segment_bytes: int
    window: float
    runs: bool


async def _load(daemon: GroupDaemon, plan: Round, acked: Acked) -> None:
    """Emits (and, some rounds, FleetForge runs of tool steps) in flight for ``plan.window``
    seconds, then ``kill -9`` of the daemon's group while they are still in flight."""
    killed = False

    async def emitter(worker: int) -> None:
        n = 0
        while True:
            n += 1
            # one Emit in four starts the greeting chain (more tables, a trace file)
            kind = "greet_requested" if (worker + n) % 4 == 0 else "crash_fact"
            request = api.EmitRequest(event_type=kind, project="crash", payload_json='{"n":1}')
            try:
                reply = await foundry.emit(request)
            except CONNECTION_LOST:
                if killed:
                    return
                raise
            acked.events[reply.event_id] = plan.number

    async def submitter() -> None:
        request = rapi.SubmitRunRequest(spec=rapi.RunSpec(dag_json=ECHO_CHAIN))
        while True:
            try:
                reply = await runtime.submit_run(request)
            except CONNECTION_LOST:
                if killed:
                    return
                raise
            acked.runs[reply.run_id] = plan.number

    async with connect(daemon.address) as (foundry, runtime):
        async with asyncio.timeout(20):
            tasks = [asyncio.create_task(emitter(i)) for i in range(IN_FLIGHT)]
            if plan.runs:
                tasks.append(asyncio.create_task(submitter()))
            await asyncio.sleep(plan.window)  # the random kill point, not a synchronization
            killed = True
            daemon.kill_group()
            await asyncio.gather(*tasks)


def _plan(rng: random.Random, number: int) -> Round:
    lagging = rng.random() < 0.35  # DuckDB far behind: the kill lands before it catches up
    return Round(
        number=number,
        delay=30.0 if lagging else round(rng.uniform(0.005, 0.1), 3),
        segment_bytes=rng.choice([512, 2048, 4096]),
        window=rng.uniform(0.02, 0.3),
        runs=not lagging and rng.random() < 0.4,  # SubmitRun has DuckDB catch up
    )


def test_kill_9_fifty_times_under_load_loses_and_repeats_nothing(group_daemons, tmp_path):
    """One home, 50 daemons, each ``kill -9``-ed 20-300 ms into a load of pipelined Emits (and
    runs of tool steps): every acknowledged write is in DuckDB at the end, none twice.
    ``JOURNAL_CRASH_SEED`` replays a failing sequence of rounds."""
    seed = int(os.environ.get("JOURNAL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    config = tmp_path / "crash.toml"
    daemon = group_daemons("crash", config)
    acked, lagged, rotated = Acked(), list[tuple[int, float, int]](), 0
    for number in range(ROUNDS):
        plan = _plan(rng, number)
        store_config(config, delay=plan.delay, segment_bytes=plan.segment_bytes)
        daemon.start()
        asyncio.run(_load(daemon, plan, acked))
        daemon.kill()
        lagging = _lagging(daemon.home, f"seed {seed}, round {number}")
        if lagging:
            lagged.append((number, plan.delay, lagging))
        rotated += len(segments(daemon.home)) > 1

    store_config(config, delay=0.05)
    daemon.start()
    torn = daemon.stderr().count("torn record") + daemon.stderr().count("never written")
    context = (
        f"seed {seed}; rounds that left DuckDB behind (round, delay, records): {lagged}; "
        f"starts that cut a torn append: {torn}"
    )
    _assert_nothing_lost_or_repeated(daemon, acked, context)
    # The kills really landed while DuckDB lagged: with a long delay, and with a short one
    # (a materialization due or under way).
    assert len([r for r in lagged if r[1] >= 30]) >= 5, context
    assert len([r for r in lagged if r[1] < 1]) >= 3, context
    assert rotated >= 5, "the journal's segments never rotated"
    _assert_healthy(daemon)


def _lagging(home: Path, where: str) -> int:
    """What a kill left: how many records the journal holds and DuckDB lacks."""
    try:
        return len(lagging_records(home))
    except pickle.UnpicklingError as exc:
        pytest.fail(f"{where}: the journal holds an acknowledged record that it cannot read back "
                    f"({exc}), so the next start cannot replay it")  # fmt: skip


def _assert_nothing_lost_or_repeated(daemon: GroupDaemon, acked: Acked, context: str) -> None:
    found = {row[0] for row in sql(daemon, "SELECT event_id FROM events WHERE project = 'crash'")}
    lost = {event: n for event, n in acked.events.items() if event not in found}
    assert not lost, (
        f"{len(lost)} of {len(acked.events)} acknowledged Emits lost: {lost}; {context}"
    )
    runs = {row[0] for row in sql(daemon, "SELECT run_id FROM runs")}
    lost_runs = {run: n for run, n in acked.runs.items() if run not in runs}
    assert not lost_runs, f"acknowledged runs lost: {lost_runs}; {context}"
    # A record applied twice would repeat its rows.
    [[events, distinct_events]] = sql(
        daemon, "SELECT count(*), count(DISTINCT event_id) FROM events"
    )
    assert events == distinct_events, context
    [[workflows, distinct_workflows]] = sql(
        daemon, "SELECT count(*), count(DISTINCT workflow_id) FROM workflows"
    )
    assert workflows == distinct_workflows, context
    [[steps, distinct_steps]] = sql(
        daemon, "SELECT count(*), count(DISTINCT (run_id, seq)) FROM run_events"
    )
    assert steps == distinct_steps, context
    [[run_rows, distinct_runs]] = sql(daemon, "SELECT count(*), count(DISTINCT run_id) FROM runs")
    assert run_rows == distinct_runs, context


def _assert_healthy(daemon: GroupDaemon) -> None:
    reply = emit(daemon, "greet_requested", project="crash", payload={"name": "Ada"})
    assert finished(daemon, reply.workflow_id).state == "completed"
    [[count]] = sql(daemon, f"SELECT count(*) FROM events WHERE event_id = '{reply.event_id}'")
    assert count == 1
    log = daemon.stderr()
    assert "Traceback" not in log, log[-3000:]
    assert "refused its rows" not in log
    assert not (daemon.home / "journal" / "rejected").exists()
    # A graceful stop leaves DuckDB with every journal record.
    assert daemon.stop(signal.SIGTERM) == 0
    assert lagging_records(daemon.home) == []


# --- 2. a torn tail record ------------------------------------------------------------------------


def _emit_facts(daemon: GroupDaemon, count: int, project: str) -> list[str]:
    """``count`` Emits one after another: a journal record each (no chain, so no query)."""

    async def go(foundry: api.FoundryStub, _: object) -> list[str]:
        request = api.EmitRequest(event_type="journal_fact", project=project)
        return [(await foundry.emit(request)).event_id for _ in range(count)]

    return daemon.call(go)


def _checksum(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))


def _half_record(seq: int) -> bytes:
    """A header claiming more payload than follows (an append cut short)."""
    payload = encode([])
    return RECORD_HEADER.pack(len(payload) + 100, _checksum(seq, payload), seq) + payload


def _bad_checksum_record(seq: int) -> bytes:
    payload = encode([])
    return RECORD_HEADER.pack(len(payload), _checksum(seq, payload) ^ 1, seq) + payload


@pytest.mark.parametrize("tail", [_half_record, _bad_checksum_record], ids=["short", "bad-crc"])
def test_a_torn_tail_record_is_dropped_with_a_warning(group_daemons, tmp_path, tail):
    config = store_config(tmp_path / "torn.toml", delay=30.0)  # the records stay journaled
    daemon = group_daemons("torn", config).start()
    before = _emit_facts(daemon, 5, "torn")
    daemon.kill()
    last = segments(daemon.home)[-1]
    with last.open("r+b") as file:  # the next append, torn, over the zeros written ahead
        file.seek(records_end(last))
        file.write(tail(applied_mark(daemon.home) + len(lagging_records(daemon.home)) + 1))

    daemon.start()
    log = daemon.stderr()
    assert "torn record" in log, log
    assert last.name in log
    assert "Traceback" not in log
    after = _emit_facts(daemon, 3, "torn")
    assert _stored(daemon, "torn") == set(before + after)
    daemon.kill()
    daemon.start()
    assert _stored(daemon, "torn") == set(before + after)


def _stored(daemon: GroupDaemon, project: str) -> set[str]:
    rows = sql(daemon, f"SELECT event_id FROM events WHERE project = '{project}'")
    assert len(rows) == len({row[0] for row in rows})  # none twice
    return {row[0] for row in rows}


# --- 3. a corrupt or missing middle segment ------------------------------------------------------


def _journal_of_many_segments(group_daemons, tmp_path: Path, name: str) -> GroupDaemon:
    """A dead daemon whose journal holds several segments of records DuckDB lacks."""
    config = store_config(tmp_path / f"{name}.toml", delay=30.0, segment_bytes=512)
    daemon = group_daemons(name, config).start()
    _emit_facts(daemon, 12, name)
    daemon.kill()
    assert len(segments(daemon.home)) >= 3
    assert lagging_records(daemon.home)
    return daemon


def _refuses(daemon: GroupDaemon, *needles: str) -> str:
    """Start refused: non-zero exit, one line on stderr holding ``needles``, no traceback."""
    done = refused_start(daemon.home, daemon.config)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stderr
    assert done.stdout == ""  # no address: it never served
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def _untouched(daemon: GroupDaemon) -> dict[str, object]:
    """What a refused start must leave as it was: the journal's bytes, the database's rows (not
    its bytes: opening it may rewrite its WAL)."""
    return {"journal": digests(daemon.home, "journal/*"), "database": database_rows(daemon.home)}


def test_a_corrupt_middle_segment_refuses_start(group_daemons, tmp_path):
    daemon = _journal_of_many_segments(group_daemons, tmp_path, "corrupt")
    middle = segments(daemon.home)[1]
    data = bytearray(middle.read_bytes())
    record = SEGMENT_HEADER.size  # the segment's first record
    data[record + RECORD_HEADER.size + 3] ^= 0xFF  # a byte of its payload
    middle.write_bytes(bytes(data))
    before = _untouched(daemon)

    line = _refuses(daemon, str(middle), f"byte {record}", "checksum")
    assert _untouched(daemon) == before
    assert _refuses(daemon, str(middle)) == line  # the same, every time


def test_a_missing_middle_segment_refuses_start(group_daemons, tmp_path):
    daemon = _journal_of_many_segments(group_daemons, tmp_path, "missing")
    after_gap = segments(daemon.home)[2]
    segments(daemon.home)[1].unlink()
    before = _untouched(daemon)

    line = _refuses(daemon, after_gap.name, "missing records")
    assert _untouched(daemon) == before
    assert _refuses(daemon) == line


# --- 4. reads stay current while DuckDB lags ------------------------------------------------------


def test_reads_see_every_acknowledged_write_while_duckdb_lags(group_daemons, tmp_path):
    config = store_config(tmp_path / "lag.toml", delay=30.0)  # DuckDB lags the whole test
    daemon = group_daemons("lag", config).start()

    def chain() -> api.EmitResponse:
        """A finished greeting chain, journaled (the journal file shows it; no query asked),
        and its commit acknowledged: the journal file shows the row a moment before the store
        tells the engine, which until then answers Status and Trace as for a running chain."""
        reply = emit(daemon, "greet_requested", project="lag", payload={"name": "Ada"})
        wait_until(lambda: journaled(daemon.home, "workflows", reply.workflow_id, "completed"),
                   what="the chain's workflow row in the journal")  # fmt: skip
        assert finished(daemon, reply.workflow_id).state == "completed"
        return reply

    first = chain()
    [workflow] = status(daemon, first.workflow_id)
    assert workflow.state == "completed"

    second = chain()
    traced = trace(daemon, second.event_id)
    assert traced.found
    assert traced.events[0].event_id == second.event_id
    per_chain = len(traced.events)  # the request, the greeting, its delivery
    assert per_chain >= 2

    third = chain()
    [[count]] = sql(daemon, "SELECT count(*) FROM events WHERE project = 'lag'")
    assert count == 3 * per_chain
    [[state]] = sql(
        daemon, f"SELECT state FROM workflows WHERE workflow_id = '{third.workflow_id}'"
    )
    assert state == "completed"

    run_id = daemon.call(
        lambda _, rt: rt.submit_run(rapi.SubmitRunRequest(spec=rapi.RunSpec(dag_json=ECHO_CHAIN)))
    ).run_id
    wait_until(lambda: journaled(daemon.home, "run_events", run_id, "run_succeeded"),
               what="the run's end in the journal")  # fmt: skip
    assert _get_run(daemon, run_id).status == rapi.RunStatus.SUCCEEDED

    daemon.kill()
    daemon.start()
    for reply in (first, second, third):
        [workflow] = status(daemon, reply.workflow_id)
        assert workflow.state == "completed"
        assert trace(daemon, reply.event_id).found
    assert sql(daemon, "SELECT count(*) FROM events WHERE project = 'lag'") == [[3 * per_chain]]
    assert _get_run(daemon, run_id).status == rapi.RunStatus.SUCCEEDED


def _get_run(daemon: GroupDaemon, run_id: str) -> rapi.RunDetail:
    reply = daemon.call(lambda _, rt: rt.get_run(rapi.GetRunRequest(run_id=run_id)))
    assert reply.run is not None
    return reply.run


# --- 5. rows the daemon re-creates from DuckDB after a crash --------------------------------------


def _attestations(daemon: GroupDaemon, run_id: str) -> dict[str, str]:
    """The run's attestations, id -> envelope, as GetAttestations answers them."""
    ids = list(_get_run(daemon, run_id).attestation_ids)
    request = rapi.GetAttestationsRequest(attestation_ids=ids)
    found = daemon.call(lambda _, rt: rt.get_attestations(request)).attestations
    return {a.attestation_id: a.signature for a in found}


def test_a_runs_attestations_lost_to_a_kill_9_are_made_again_the_same(group_daemons, tmp_path):
    """A run's attestations are not journaled: their facts are, and signing is deterministic.
    Killed before DuckDB has them, the next daemon re-attests every one the run's events
    announce — the same envelopes as a daemon that had them made — and they survive another
    kill -9 once GetAttestations has answered them."""
    config = store_config(tmp_path / "attest.toml", delay=30.0)  # DuckDB lags: rows in memory
    daemon = group_daemons("attest", config).start()
    request = rapi.SubmitRunRequest(spec=rapi.RunSpec(dag_json=ECHO_CHAIN))
    run_id = daemon.call(lambda _, rt: rt.submit_run(request)).run_id
    wait_until(lambda: journaled(daemon.home, "run_events", run_id, "run_succeeded"),
               what="the run's end in the journal")  # fmt: skip
    announced = set(_get_run(daemon, run_id).attestation_ids)
    assert len(announced) >= 5  # two steps, their tool calls, a capability token, the run
    daemon.kill()
    assert not journaled(daemon.home, "attestation_statements", run_id)  # never journaled

    daemon.start()  # replays the facts; re-attests what they announce
    first = _attestations(daemon, run_id)  # answered once DuckDB has them
    assert set(first) == announced
    daemon.stop()

    # Lost again, as if the daemon had died before DuckDB had them: made again, the same.
    con = duckdb.connect(str(daemon.home / "foundry.duckdb"))
    try:
        con.execute("DELETE FROM attestation_statements WHERE run_id = ?", [run_id])
    finally:
        con.close()
    daemon.start()
    assert _attestations(daemon, run_id) == first
    daemon.kill()

    daemon.start()  # DuckDB had them before GetAttestations answered: nothing to make again
    assert _attestations(daemon, run_id) == first
    [[rows, runs]] = sql(
        daemon,
        "SELECT count(*), count(*) FILTER (kind = 'run') "
        f"FROM attestations WHERE run_id = '{run_id}'",
    )
    assert (rows, runs) == (len(first), 1)
    assert _get_run(daemon, run_id).status == rapi.RunStatus.SUCCEEDED
