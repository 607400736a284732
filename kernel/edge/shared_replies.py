"""A reply many clients are sent, made and encoded once.

A Watch event goes to every watcher of its project, on either listener. Each watcher made its own
reply and encoded it: 200 watchers that read nothing, sent 4 MB events, held 200 JSON texts and
200 encodings of each (1.7 GB after the second event) and kept the daemon's thread busy 4-5 s per
event — no other call was answered meanwhile. Now every watcher of an event is handed the same
message (:meth:`SharedReplies.reply`, by the event's id), and a codec that encodes a message it
was handed before reuses that encoding (:meth:`SharedReplies.encoded`): one text per event, the
sends sharing it.

The recent ones are held, while their sizes are under a budget; a watcher so far behind that its
event is gone makes its own again. A message no one registered is encoded as before (a dict
lookup more). Everything here runs on the daemon's one event-loop thread.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sized
from typing import Any, TypeVar

MESSAGE = TypeVar("MESSAGE")
FORM = TypeVar("FORM", bound=Sized)

# The forms: protobuf bytes, proto3 JSON text (a WebSocket's), the same as UTF-8 (Connect's)
PROTO, JSON, JSON_UTF8 = "proto", "json", "json-utf8"

# Bytes of payloads and encodings held for watchers still to be sent them: a 4 MB event in two
# forms (protobuf, JSON) is ~12 MB; and at most this many events (small ones cost ~1 KB each).
BUDGET_BYTES = 96 << 20
# The forms a stream's replies go out in, with their encoders, for a reply made ahead on a worker
# thread (a run event of a large output: ``runtime_service``): each edge sets its stream's (a
# Connect proto stream's PROTO, a WebSocket's JSON); unset, only the message is made ahead.
STREAM_FORMS: contextvars.ContextVar[tuple[tuple[str, Callable[[Any], Sized]], ...]] = (
    contextvars.ContextVar("stream_forms", default=())
)
MAX_ENTRIES = 4096


class _Entry:
    __slots__ = ("key", "message", "size", "forms")

    def __init__(self, key: Hashable, message: Any) -> None:
        self.key, self.message, self.size = key, message, 0
        self.forms: dict[str, Any] = {}


class SharedReplies:
    """The replies made of recent items, by a key naming each item (an event's id), and their
    encodings. Only the replies are held, not the items (an event's parsed payload can be
    several times its text)."""

    def __init__(self, budget: int = BUDGET_BYTES, entries: int = MAX_ENTRIES) -> None:
        self._budget, self._entries = budget, entries
        self._by_key: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._by_message: dict[int, _Entry] = {}
        self._bytes = 0

    def reply(self, key: Hashable, size: int, make: Callable[[], MESSAGE]) -> MESSAGE:
        """``make()``, the same message for the same ``key`` while it is held. ``size``: what
        the message holds (its payload's bytes)."""
        entry = self._by_key.get(key)
        if entry is not None:
            return entry.message  # type: ignore[no-any-return]
        message = make()
        entry = _Entry(key, message)
        self._by_key[key] = entry
        self._by_message[id(message)] = entry  # (held by the entry: its id is no other's)
        self._grow(entry, size)
        return message

    def holds(self, key: Hashable, forms: tuple[str, ...] = ()) -> bool:
        """Whether the reply for ``key`` is held, encoded in each of ``forms``."""
        entry = self._by_key.get(key)
        return entry is not None and all(form in entry.forms for form in forms)

    def prime(self, key: Hashable, message: Any, encodings: Mapping[str, Sized]) -> None:
        """Hold ``message`` for ``key``, and its ``encodings`` by form (made on a worker thread:
        :meth:`reply` and :meth:`encoded` then find them); a form held already is kept."""
        held = self.reply(key, 0, lambda: message)
        entry = self._by_message.get(id(held))
        if entry is None:
            return  # (dropped at once: larger than the budget and not the newest)
        for form, done in encodings.items():
            if form not in entry.forms:
                entry.forms[form] = done
                self._grow(entry, len(done))

    def encoded(self, message: MESSAGE, form: str, encode: Callable[[MESSAGE], FORM]) -> FORM:
        """``encode(message)``, made once per ``form`` for a message :meth:`reply` made."""
        entry = self._by_message.get(id(message))
        if entry is None or entry.message is not message:
            return encode(message)
        done = entry.forms.get(form)
        if done is None:
            done = entry.forms[form] = encode(message)
            self._grow(entry, len(done))
        return done

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._by_key)

    def _grow(self, entry: _Entry, size: int) -> None:
        entry.size += size
        self._bytes += size
        while self._by_key and (self._bytes > self._budget or len(self._by_key) > self._entries):
            oldest = next(iter(self._by_key.values()))
            if oldest is entry and len(self._by_key) == 1:
                break  # one reply over the budget is kept while it is the newest
            self._drop(oldest)

    def _drop(self, entry: _Entry) -> None:
        del self._by_key[entry.key]
        del self._by_message[id(entry.message)]
        self._bytes -= entry.size


SHARED_REPLIES = SharedReplies()
"""The process's: the services that make replies and every listener's codecs meet here."""
