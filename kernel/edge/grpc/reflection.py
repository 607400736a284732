"""gRPC server reflection from the project's own protos, so grpcurl, ``buf curl`` and Postman
work without a copy of the schema.

Our messages are betterproto2 classes, which register nothing with protobuf's descriptor pool.
The descriptors come instead from ``proto/descriptors.binpb``, a FileDescriptorSet that
``make proto`` writes next to the ``.proto`` sources (imports and comments included), loaded into
a private pool together with the health and reflection protos grpclib ships. grpclib's own
``ServerReflection`` (v1 and v1alpha) answers from that pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from foundry.kernel.errors import ConfigError
from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

DESCRIPTOR_SET = "descriptors.binpb"
GRPCLIB_PROTOS = (health_pb2, reflection_pb2, reflection_v1alpha_pb2)


@cache
def file_descriptors() -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    """The project's file descriptors (and their imports), plus health and reflection, each
    after the files it imports."""
    try:
        data = resources.files("foundry.proto").joinpath(DESCRIPTOR_SET).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"foundry.proto/{DESCRIPTOR_SET} is missing ({exc.strerror}): run `make proto`"
        ) from None
    files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)  # as protoc orders them
    files.extend(
        descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb)
        for m in GRPCLIB_PROTOS
    )
    return tuple(files)


@cache
def descriptor_pool_of_protos() -> descriptor_pool.DescriptorPool:
    """:func:`file_descriptors` in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    for file in file_descriptors():
        pool.Add(file)
    return pool


@cache
def _sources() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Each file's descriptor as ``make proto`` wrote it, its comments (``source_code_info``)
    included, by file name."""
    return {file.name: file for file in file_descriptors()}


class FileWithSource:
    """A pool's file descriptor that copies itself with its comments: grpclib's reflection
    sends ``CopyToProto``'s result, and a pool's descriptors drop ``source_code_info`` (grpcurl
    ``describe`` showed no comment)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # protobuf's name
        source = _sources().get(self._file.name)
        if source is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(source)


class MethodAwarePool:
    """The pool as grpclib's reflection uses it, except that a method's full name (what
    ``grpcurl describe foundry.Foundry.Emit`` asks for) finds its file: upb's
    ``FindFileContainingSymbol`` knows services and messages but not their methods. Files come
    with their comments (``FileWithSource``)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileByName(self, name: str) -> Any:  # protobuf's name
        return FileWithSource(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # protobuf's name
        return FileWithSource(self._file_containing(symbol))

    def _file_containing(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file


def with_reflection(services: Sequence[Any]) -> list[Any]:
    """``services`` and the reflection services (v1, v1alpha), which list them all, themselves
    included. grpclib's ``ServerReflection.extend`` lists the services it is given but not the
    ones it adds: the reflection services of a first ``extend`` are given to a second one for
    their names only, and left out of the result."""
    pool = MethodAwarePool(descriptor_pool_of_protos())
    for_names = ServerReflection.extend([], pool=pool)
    extended = ServerReflection.extend([*services, *for_names], pool=pool)
    return [s for s in extended if not any(s is n for n in for_names)]
