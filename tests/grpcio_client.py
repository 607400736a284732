"""grpcio, the independent client: the official stubs generated at test time from the repo's
``.proto`` sources, raw calls that send bytes no generated code would, and a stream reader.

Generating the stubs here (instead of using the betterproto2 code the daemon is built from) is what
makes the grpcio tests a wire-compatibility check: only the ``.proto`` files are shared.
"""

from __future__ import annotations

import importlib
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from tests.helpers import DEADLINE, wait_until

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTOS = ("foundry.proto", "fleetforge/runtime/v1/runtime.proto")
PROBE = "watch_probe"


@dataclass(frozen=True)
class Grpcio:
    """The generated modules: messages (``*_pb2``) and service stubs (``*_pb2_grpc``)."""

    foundry_pb2: ModuleType
    foundry_pb2_grpc: ModuleType
    runtime_pb2: ModuleType
    runtime_pb2_grpc: ModuleType

    @contextmanager
    def connect(self, address: str, **options: Any) -> Iterator[tuple[Any, Any]]:
        """``(FoundryStub, RuntimeServiceStub)`` on one insecure channel (grpcio's ``options``,
        e.g. ``compression``), closed afterwards."""
        channel = grpc.insecure_channel(address, **options)
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            yield (
                self.foundry_pb2_grpc.FoundryStub(channel),
                self.runtime_pb2_grpc.RuntimeServiceStub(channel),
            )
        finally:
            channel.close()


def generate(out_dir: Path) -> Grpcio:
    """Run ``python -m grpc_tools.protoc --python_out --grpc_python_out`` and import the result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS],
        capture_output=True, text=True, cwd=PROTO_ROOT, check=False, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({done.returncode}): {done.stderr}")
    sys.path.insert(0, str(out_dir))
    try:
        return Grpcio(
            foundry_pb2=importlib.import_module("foundry_pb2"),
            foundry_pb2_grpc=importlib.import_module("foundry_pb2_grpc"),
            runtime_pb2=importlib.import_module("fleetforge.runtime.v1.runtime_pb2"),
            runtime_pb2_grpc=importlib.import_module("fleetforge.runtime.v1.runtime_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out_dir))


@contextmanager
def raw_channel(address: str, options: tuple[tuple[str, Any], ...] = ()) -> Iterator[grpc.Channel]:
    """An insecure grpcio channel for :func:`raw_call` (no stubs, no serializers)."""
    with grpc.insecure_channel(address, options=list(options)) as channel:
        yield channel


def raw_call(
    channel: grpc.Channel, path: str, body: bytes, timeout: float = DEADLINE
) -> tuple[grpc.StatusCode, str]:
    """Send ``body`` as the request bytes of the unary method ``path``: (status code, details)."""
    method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        method(body, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


class StreamReader:
    """Reads a grpcio server stream on a thread into a queue, so a test can wait with a deadline.

    Items are the responses, then one final ``grpc.RpcError`` or ``None`` (clean end).
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self.call:
                self.items.put(response)
        except grpc.RpcError as exc:
            self.items.put(exc)
            return
        self.items.put(None)

    def get(self, timeout: float) -> Any:
        """The next item; raises ``queue.Empty`` after ``timeout`` seconds."""
        return self.items.get(timeout=timeout)

    def sync(self, foundry: Any, pb: ModuleType, project: str = "p") -> None:
        """For a Watch stream: emit probes in ``project`` until one arrives; every event committed
        after that is seen. Fails if the stream ends or errs first."""

        def probe_arrived() -> bool:
            foundry.Emit(pb.EmitRequest(event_type=PROBE, project=project))
            try:
                while True:
                    item = self.get(timeout=0.2)
                    assert not isinstance(item, grpc.RpcError | None), item
                    if item.event_type == PROBE:
                        return True
            except queue.Empty:
                return False

        wait_until(probe_arrived, what="the grpcio Watch to go live")

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)
