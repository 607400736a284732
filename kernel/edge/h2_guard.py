"""Header blocks HPACK reads in time bounded by the header list, on both listeners (h2's
internals: here only).

A header block is a HEADERS frame and up to 64 CONTINUATION frames (h2's
``CONTINUATION_BACKLOG``): 1 MiB at the default frame size, decoded by hpack on the daemon's
one thread. What a block decodes to is capped (the header list: 64 KiB on the HTTP port, 1 MiB
on the gRPC port, whose calls past 64 KiB are refused one by one), and every header adds at
least 32 bytes to it — but a dynamic table size update adds nothing: a block of a million
one-byte updates held both ports for 2.5 s, and one such block a second kept the daemon
saturated (found by a hunt). A block may open with at most ``MAX_SIZE_UPDATES`` of them
(RFC 7541 §4.2: the smallest size since the last block, then the final one; hpack refuses one
anywhere else); past that the connection is sent GOAWAY (ENHANCE_YOUR_CALM) and closed, as for
any h2 protocol error.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("foundry.daemon")

MAX_SIZE_UPDATES = 2


def header_blocks_are_boundable() -> str | None:
    """None, or what changed in h2 so that :func:`limit_header_blocks` cannot work."""
    from h2 import frame_buffer

    buffer = getattr(frame_buffer, "FrameBuffer", None)
    if buffer is None or not callable(getattr(buffer, "_update_header_buffer", None)):
        return "h2's FrameBuffer._update_header_buffer is gone"
    if "_headers_buffer" not in buffer().__dict__:
        return "h2's FrameBuffer no longer keeps _headers_buffer"
    return None


def limit_header_blocks() -> bool:
    """Bound every connection's header blocks (both listeners use h2's FrameBuffer).
    Idempotent. False, with a warning, when h2 changed (blocks are then unbounded)."""
    from h2 import frame_buffer
    from h2.exceptions import DenialOfServiceError
    from hyperframe.frame import HeadersFrame, PushPromiseFrame

    reason = header_blocks_are_boundable()
    if reason is not None:
        log.warning("%s: header blocks are not bounded", reason)
        return False
    update = frame_buffer.FrameBuffer._update_header_buffer
    if getattr(update, "header_blocks_limited", False):
        return True

    def updating(self: Any, frame: Any) -> Any:
        if frame is not None and type(frame) is not HeadersFrame and not self._headers_buffer:
            return update(self, frame)  # (DATA, and every frame between header blocks)
        whole = update(self, frame)
        if isinstance(whole, HeadersFrame | PushPromiseFrame) and (
            _leading_size_updates(whole.data) > MAX_SIZE_UPDATES
        ):
            raise DenialOfServiceError("a header block of many dynamic table size updates")
        return whole

    wrapped: Any = functools.wraps(update)(updating)
    wrapped.header_blocks_limited = True
    frame_buffer.FrameBuffer._update_header_buffer = wrapped  # type: ignore[method-assign]
    return True


def _leading_size_updates(block: bytes) -> int:
    """How many dynamic table size updates open ``block`` (counted to one past the limit)."""
    count, at = 0, 0
    while at < len(block) and block[at] & 0xE0 == 0x20 and count <= MAX_SIZE_UPDATES:
        count += 1
        if block[at] & 0x1F == 0x1F:  # a size of 31 or more: continuation bytes follow
            at += 1
            while at < len(block) and block[at] & 0x80:
                at += 1
        at += 1
    return count
