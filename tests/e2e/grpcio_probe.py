"""grpcio's own reflection and health clients against a daemon, run as a child process:
``python -m tests.e2e.grpcio_probe ADDRESS`` prints one JSON report.

A child process, because grpcio-reflection's and grpcio-health-checking's generated modules and
grpclib's (which the daemon serves with, and which the test process imports through
``kernel/edge/grpc/server.py``) define the same protobuf symbols (``grpc.health.v1``,
``grpc.reflection.v1alpha``), and one process's default descriptor pool cannot hold both.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 10


def reflection(channel: grpc.Channel) -> dict[str, Any]:
    """Every service the server lists, described from the descriptors reflection sends."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    services = {}
    for name in database.get_services():
        service = pool.FindServiceByName(name)
        services[name] = {
            "file": service.file.name,
            "methods": {
                m.name: [m.input_type.full_name, m.output_type.full_name, m.server_streaming]
                for m in service.methods
            },
        }
    emit_request = pool.FindMessageTypeByName("foundry.EmitRequest")
    return {
        "services": services,
        "emit_request_fields": {f.name: f.number for f in emit_request.fields},
    }


def health(channel: grpc.Channel, names: list[str]) -> dict[str, str]:
    stub = health_pb2_grpc.HealthStub(channel)
    statuses = {}
    for name in names:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
            statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            statuses[name] = exc.code().name
    return statuses


def unknown_method(channel: grpc.Channel, path: str) -> list[str]:
    try:
        channel.unary_unary(path)(b"", timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return [exc.code().name, exc.details() or ""]
    return ["OK", ""]


def main(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        report = reflection(channel)
        names = ["", *report["services"], "no.such.Service"]
        report["health"] = health(channel, names)
        report["unknown"] = {
            path: unknown_method(channel, path)
            for path in ("/foundry.Foundry/NoSuchMethod", "/no.such.Service/Call")
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
