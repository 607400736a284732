"""Canary for kernel/grpc_internals.py: what it replaces in grpclib is still where it was."""

import inspect

import grpclib
import grpclib.protocol
import grpclib.server
import grpclib.stream
from foundry.kernel.edge.grpc import internals as grpc_internals


def test_grpclib_server_still_reads_messages_through_its_module_level_recv_message():
    source = inspect.getsource(grpclib.server.Stream.recv_message)
    assert "await recv_message(self._stream, self._codec, self._recv_type)" in source, (
        f"grpclib {grpclib.__version__} no longer calls grpclib.server.recv_message: "
        "the message-size limit in kernel/grpc_internals.py would not apply"
    )


def test_the_replaced_function_has_the_signature_we_mimic():
    params = list(inspect.signature(grpc_internals.ORIGINAL_RECV_MESSAGE).parameters)
    assert params == ["stream", "codec", "message_type"], params
    source = inspect.getsource(grpc_internals.ORIGINAL_RECV_MESSAGE)
    assert "recv_data(5)" in source, "grpclib changed its message framing"


def test_protocol_streams_still_offer_recv_data():
    assert "size" in inspect.signature(grpclib.protocol.Stream.recv_data).parameters
