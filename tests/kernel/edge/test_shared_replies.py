"""Every watcher of an event is handed one reply, and each of its encodings is made once."""

from __future__ import annotations

import gc
import weakref

from foundry.kernel.edge.shared_replies import JSON, PROTO, SharedReplies


class Counted:
    """An encoder that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, message: list[str]) -> str:
        self.calls += 1
        return "encoded " + message[0]


def test_the_same_key_gets_the_same_reply_encoded_once_per_form():
    shared = SharedReplies()
    first = shared.reply("evt_a", 100, lambda: ["a" * 100])
    assert shared.reply("evt_a", 100, lambda: ["other"]) is first
    to_proto, to_json = Counted(), Counted()
    for _ in range(50):  # fifty watchers
        assert shared.encoded(first, PROTO, to_proto) == "encoded " + "a" * 100
        shared.encoded(first, JSON, to_json)
    assert (to_proto.calls, to_json.calls) == (1, 1)
    assert shared.held_bytes == 100 + 2 * len("encoded " + "a" * 100)


def test_only_the_reply_is_held_not_what_it_was_made_of():
    """An event's parsed payload can be several times its text: the memo held 4x its budget."""

    class Item:
        pass

    def made_of(shared: SharedReplies) -> weakref.ref[Item]:
        item = Item()
        shared.reply("evt_a", 10, lambda: ["made of", type(item).__name__])
        return weakref.ref(item)

    shared = SharedReplies()
    gone = made_of(shared)
    gc.collect()
    assert gone() is None
    assert len(shared) == 1


def test_a_message_no_one_registered_is_encoded_each_time():
    shared, encode = SharedReplies(), Counted()
    message = ["b"]
    shared.encoded(message, PROTO, encode)
    shared.encoded(message, PROTO, encode)
    assert encode.calls == 2
    assert len(shared) == 0


def test_the_oldest_replies_go_past_the_budget_and_are_made_again():
    shared = SharedReplies(budget=1_000, entries=100)
    replies = [shared.reply(n, 300, lambda n=n: [str(n)]) for n in range(5)]
    assert len(shared) == 3  # 900 bytes: the two oldest went
    assert shared.held_bytes == 900
    assert shared.reply(4, 300, lambda: ["4"]) is replies[4]
    again = shared.reply(0, 300, lambda: ["0"])
    assert again is not replies[0]
    assert again == replies[0]
    encode = Counted()  # an encoding of a reply that went is made, not kept
    shared.encoded(replies[1], PROTO, encode)
    shared.encoded(replies[1], PROTO, encode)
    assert encode.calls == 2


def test_the_count_of_replies_is_bounded_and_one_over_the_budget_is_kept_while_newest():
    shared = SharedReplies(budget=1_000, entries=2)
    for n in range(4):
        shared.reply(n, 1, lambda n=n: [str(n)])
    assert len(shared) == 2
    reply = shared.reply("huge", 5_000, lambda: ["huge"])
    assert len(shared) == 1
    assert shared.held_bytes == 5_000
    assert shared.reply("huge", 5_000, lambda: ["other"]) is reply
    shared.reply("next", 1, lambda: ["next"])
    assert len(shared) == 1
    assert shared.held_bytes == 1


def test_a_reply_made_ahead_is_the_one_handed_out_with_its_encodings():
    """(A run event of a large output, made on a worker thread: ``runtime_service``.)"""
    shared = SharedReplies()
    made = ["big"]
    assert not shared.holds("run_1")
    shared.prime("run_1", made, {PROTO: "proto of big"})
    assert shared.holds("run_1", (PROTO,))
    assert not shared.holds("run_1", (PROTO, JSON))
    assert shared.reply("run_1", 0, lambda: ["made again"]) is made
    never = Counted()
    assert shared.encoded(made, PROTO, never) == "proto of big"
    assert never.calls == 0
    shared.prime("run_1", ["another"], {PROTO: "other", JSON: "json of big"})  # a second tapper
    assert shared.reply("run_1", 0, lambda: ["made again"]) is made
    assert shared.encoded(made, PROTO, never) == "proto of big"  # (what was held is kept)
    assert shared.encoded(made, JSON, never) == "json of big"
    assert shared.held_bytes == len("proto of big") + len("json of big")
