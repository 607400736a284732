"""A graceful stop drains: a call in flight when SIGTERM arrives finishes OK, new calls are turned
away, and the daemon exits 0 (kernel/daemon.py, edge/grpc/server.py ``GrpcServer``)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.const import Status

from tests.grpcio_client import StreamReader
from tests.helpers import wait_until
from tests.runs.helpers import dag, submit, wait_done

# Long enough that new calls are turned away before the call in flight ends, even on a loaded
# 2-core CI machine (at 2 s, one run in many saw the reply first; at 5 s, one CI run did too).
SLOW_STEP_SECONDS = 10.0

CONFIG = f"""
[daemon]
shutdown_grace = 30.0

[[blocks]]
name = "slow"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo started >> "$MARKER"; sleep {SLOW_STEP_SECONDS}; echo "{{}}"']
pass_env = ["MARKER"]
timeout = 60
"""


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def turned_away(daemon: Any, run_id: str) -> bool:
    """A new call fails (the listener is closed, or UNAVAILABLE) while the daemon drains. A
    connection the kernel queued just before the listener closed is never served: its call
    waited for the daemon's exit — past the call in flight's reply, one CI run in many — so
    a call not answered within its deadline counts as turned away too."""
    request = api.GetRunRequest(run_id=run_id)
    try:
        daemon.call(lambda _, rt: rt.get_run(request, timeout=3.0))
    except GRPCError as exc:
        return exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED)
    except Exception:  # refused, or a connection the closed listener had queued was dropped
        return True
    return False


def test_a_call_in_flight_at_sigterm_completes_ok_and_the_daemon_exits_0(make_daemon, tmp_path):
    marker = tmp_path / "marker"
    daemon = make_daemon(CONFIG, env={"MARKER": str(marker)})
    run = wait_done(daemon, submit(daemon, dag({"id": "s", "type": "slow", "inputs": {"i": 1}})))
    assert run.status == api.RunStatus.SUCCEEDED
    assert lines(marker) == 1

    # ReplayRun re-executes the observer step live: the call is in flight for ~5 s.
    outcome: dict[str, Any] = {}

    def replay() -> None:
        request = api.ReplayRunRequest(run_id=run.run_id, mode=api.ReplayMode.FULL)
        try:
            outcome["reply"] = daemon.call(lambda _, rt: rt.replay_run(request))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    caller = threading.Thread(target=replay)
    caller.start()
    try:
        wait_until(lambda: lines(marker) == 2, what="the replayed step to start")
        process = daemon.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: turned_away(daemon, run.run_id), what="new calls to be turned away")
        assert "reply" not in outcome  # still draining: the new call did not wait for it
        code = process.wait(30)  # (a second signal would cut the drain short)
    finally:
        caller.join(30)
        daemon.close()

    assert "error" not in outcome, f"the call in flight failed: {outcome.get('error')!r}"
    reply = outcome["reply"]
    assert reply.run_id == run.run_id
    assert [s.step_id for s in reply.steps] == ["s"]
    assert reply.strategy == api.ReplayStrategy.LIVE
    assert code == 0, daemon.stderr()[-2000:]


def test_streams_open_at_sigterm_end_unavailable_not_ok(make_daemon, grpcio_client):
    """A Watch, and a TapRun of a run that has not ended, ended OK when the daemon stopped: a
    client could not tell that from the end of a run or of its own watch, so it did not
    reconnect. They end UNAVAILABLE, saying why."""
    daemon = make_daemon(CONFIG)
    paused = submit(daemon, dag({"id": "s", "type": "transform", "inputs": {"v": 1}}),
                    breakpoints=("s",))  # fmt: skip
    wait_until(lambda: _status(daemon, paused) == api.RunStatus.PAUSED_AT_STEP, what="a pause")
    fpb, rpb = grpcio_client.foundry_pb2, grpcio_client.runtime_pb2
    with grpcio_client.connect(daemon.address) as (foundry, runtime):
        watch = StreamReader(foundry.Watch(fpb.WatchRequest()))
        watch.sync(foundry, fpb)
        tap = StreamReader(runtime.TapRun(rpb.TapRunRequest(run_id=paused)))
        assert tap.get(timeout=10).kind == "run_submitted"
        daemon.process.send_signal(signal.SIGTERM)
        ends = [_last(watch), _last(tap)]
    assert daemon.process.wait(60) == 0
    for end, said in zip(ends, ("watch again", "tap the run again"), strict=True):
        assert isinstance(end, grpc.RpcError), end
        assert end.code() == grpc.StatusCode.UNAVAILABLE, end
        assert f"the daemon is shutting down; {said} once it is back" in end.details()


def _status(daemon: Any, run_id: str) -> Any:
    return daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run.status


def _last(stream: Any) -> Any:
    """What ends a grpcio stream (its last item: an RpcError, or None for OK)."""
    while True:
        item = stream.get(timeout=30)
        if item is None or not hasattr(item, "event_type") and not hasattr(item, "kind"):
            return item


BIG_CONFIG = """
[daemon]
shutdown_grace = 1.0

[[blocks]]
name = "big"
type = "shell"
kind = "observer"
command = ["python3", "-c", "import json; print(json.dumps({'x': 'a' * 2000000}))"]
timeout = 60
"""


def test_a_client_that_reads_nothing_does_not_hold_the_stop(make_daemon):
    """Found by a review: calls cut short by the grace were answered UNAVAILABLE in trailers,
    and grpclib waited to write them to a client that had stopped reading (its window open,
    its socket full) — the daemon never exited after SIGTERM."""
    import h2.config
    import h2.connection
    import h2.settings

    daemon = make_daemon(BIG_CONFIG)
    run = wait_done(daemon, submit(daemon, dag({"id": "s", "type": "big", "inputs": {}})))
    host, port = daemon.address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.increment_flow_control_window(2**31 - 1 - 65_535)
        body = bytes(api.GetRunRequest(run_id=run.run_id))
        for _ in range(20):  # 40 MB of replies it never reads
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, [
                (":method", "POST"), (":scheme", "http"), (":authority", daemon.address),
                (":path", "/fleetforge.runtime.v1.RuntimeService/GetRun"),
                ("content-type", "application/grpc"), ("te", "trailers")])  # fmt: skip
            conn.send_data(stream, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(2)  # the daemon writes until the socket is full
        process = daemon.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0  # held for good before; 1-2 s now
    assert "call(s) still running after 1.0 s" in daemon.stderr()
    assert "Failed to handle cancellation" not in daemon.stderr()
