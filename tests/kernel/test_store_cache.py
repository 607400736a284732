"""DuckDB keeps the database's blocks it wrote or read in memory until ``memory_limit`` forces them
out: the store reopens the database once they pass ``cache_bytes`` and no query runs
(``Store._drop_cache``), which lets them go — and the reopened instance is locked as before."""

import subprocess
import sys
import threading

import duckdb
import pytest
import trio
from foundry.kernel.actors.mailbox import ask, reply_pair
from foundry.kernel.actors.store.messages import Append, CountRows, RunRetention, RunUserQuery
from foundry.kernel.errors import Unavailable

from . import test_analytics_store
from .harness import GUARD_SECONDS
from .test_analytics_store import store as running_store
from .test_store import make_event

NOW = test_analytics_store.NOW
MEMORY = "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
BATCH, BATCHES = 1_000, 8


async def scalar(store, sql):
    reply = await ask(store, lambda r: RunUserQuery(sql, {}, 10, 5.0, r))
    return reply.rows[0].strip("[]").strip('"')


async def write(store, start, count):
    reply, pending = reply_pair()
    events = tuple(make_event(n) for n in range(start, start + count))
    await store.send(Append(events, (), reply))
    await pending.wait()


async def write_and_settle(store):
    """BATCHES appends, each given time to reach DuckDB (and the store to reopen it)."""
    for i in range(BATCHES):
        await write(store, i * BATCH, BATCH)
        await trio.sleep(0.1)
    await trio.sleep(0.3)


async def test_duckdbs_buffers_stay_under_cache_bytes_while_the_database_grows(tmp_path):
    held, cache = {}, 512 * 1024
    for cache_bytes in (0, cache):
        home = tmp_path / str(cache_bytes)
        async with running_store(home, materialize_delay=0.01, cache_bytes=cache_bytes) as store:
            await write_and_settle(store)
            held[cache_bytes] = int(await scalar(store, MEMORY))
            assert int(await scalar(store, "SELECT count(*) FROM events")) == BATCH * BATCHES
    print(f"DuckDB's buffers after {BATCH * BATCHES:,} events: {held}")
    assert held[0] > 3 * cache  # the cache grows with the database when never let go
    assert held[cache] < cache + held[0] // BATCHES  # at most about a batch over


async def test_the_reopened_database_keeps_its_settings_and_the_sandbox_lock(tmp_path):
    settings = (
        "lock_configuration",
        "enable_external_access",
        "TimeZone",
        "memory_limit",
        "allocator_background_threads",
    )
    options = {"materialize_delay": 0.01, "memory_limit": "200MB"}
    async with running_store(tmp_path, cache_bytes=1, **options) as store:
        await write_and_settle(store)
        after = [await scalar(store, f"SELECT current_setting('{s}')") for s in settings]
    async with running_store(tmp_path / "never", cache_bytes=0, **options) as store:
        before = [await scalar(store, f"SELECT current_setting('{s}')") for s in settings]
    assert after == before
    assert after[:3] == ["true", "false", "UTC"]


async def test_a_query_in_flight_holds_the_reopen_off_and_finishes(tmp_path):
    reading, release = threading.Event(), threading.Event()

    def hold(work):
        if work == "read" and not reading.is_set():
            reading.set()
            release.wait(GUARD_SECONDS)

    options = {"materialize_delay": 0.01, "cache_bytes": 1, "hold_for_test": hold}
    async with running_store(tmp_path, **options) as store:
        async with trio.open_nursery() as nursery:
            counts = []

            async def count():
                counts.append(await ask(store, CountRows))

            nursery.start_soon(count)
            await trio.to_thread.run_sync(reading.wait)
            await write_and_settle(store)  # DuckDB's buffers pass cache_bytes meanwhile
            release.set()
        # its cursor stayed open under it (DuckDB takes the snapshot at its first read)
        assert counts[0].events == BATCH * BATCHES
        await write(store, BATCH * BATCHES, 1)
        await trio.sleep(0.3)
        assert int(await scalar(store, "SELECT count(*) FROM events")) == BATCH * BATCHES + 1


async def test_a_reopen_while_another_connection_holds_the_instance_keeps_it_locked(tmp_path):
    """A connection of the same process to the file shares the store's instance, which then
    outlives the reopen, settings and lock with it: the store goes on with it."""
    async with running_store(tmp_path, materialize_delay=0.01, cache_bytes=1) as store:
        other = duckdb.connect(str(tmp_path / "foundry.duckdb"))
        try:
            await write_and_settle(store)
            assert await scalar(store, "SELECT current_setting('lock_configuration')") == "true"
            assert int(await scalar(store, "SELECT count(*) FROM events")) == BATCH * BATCHES
        finally:
            other.close()
        await write_and_settle(store)  # and the next reopen starts a fresh, locked instance
        assert await scalar(store, "SELECT current_setting('lock_configuration')") == "true"


async def test_retention_prunes_and_archives_across_reopens(tmp_path):
    """Every batch reopens the database (cache_bytes=1): a retention pass still archives and
    prunes, on the connection the store holds when its delete runs."""
    old = [test_analytics_store.chain(test_analytics_store.OLD, n) for n in range(5)]
    options = {"materialize_delay": 0.01, "cache_bytes": 1, "retain_days": 30}
    async with running_store(tmp_path, **options) as send:
        for _, records in old:
            await test_analytics_store.append(send, records)
            await trio.sleep(0.05)
        await ask(send, RunRetention)  # (with the pass at start, if it saw some)
        await test_analytics_store.append(send, test_analytics_store.chain(NOW, 9)[1])
        await trio.sleep(0.1)
        assert int(await scalar(send, "SELECT count(*) FROM workflows")) == 1
        assert int(await scalar(send, "SELECT count(*) FROM archived_workflows")) == 5


# Another process opening the file while the store has it closed (between the close and the
# connect of a reopen) makes DuckDB refuse the store's connection.
HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
sys.stdin.read()
con.close()
"""


async def test_a_reopen_duckdb_refuses_leaves_writes_durable_and_reads_unavailable_until_it_opens(
    tmp_path, caplog
):
    """Between the close and the connect of a reopen, another process opens the file: the store
    keeps acknowledging writes (its journal), answers queries UNAVAILABLE naming the cause,
    retries, and once the file is free opens it again, with every write applied and locked as
    before."""
    holder: list[subprocess.Popen[str]] = []

    def hold(work):
        if work == "reconnect" and not holder:
            process = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(tmp_path / "foundry.duckdb")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            holder.append(process)
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "holding"

    options = {"materialize_delay": 0.01, "cache_bytes": 1, "hold_for_test": hold}
    try:
        async with running_store(tmp_path, **options) as store:
            written = 0
            with trio.fail_after(GUARD_SECONDS):
                while not holder:  # each batch reopens (cache_bytes=1): the first one is refused
                    await write(store, written, 1)
                    written += 1
                    await trio.sleep(0.05)
            await write(store, written, BATCH)  # acknowledged: in the journal, DuckDB or not
            written += BATCH
            with pytest.raises(Unavailable, match="could not be opened again"):
                await scalar(store, "SELECT count(*) FROM events")
            assert "could not open the database again" in caplog.text
            holder[0].communicate("", timeout=GUARD_SECONDS)  # the other process lets go
            with trio.fail_after(GUARD_SECONDS):
                while True:
                    try:
                        count = int(await scalar(store, "SELECT count(*) FROM events"))
                    except Unavailable:
                        await trio.sleep(0.2)
                        continue
                    if count == written:
                        break
                    await trio.sleep(0.05)
            assert await scalar(store, "SELECT current_setting('lock_configuration')") == "true"
            assert "the database is open again" in caplog.text
    finally:
        for process in holder:
            process.kill()
            process.wait()
