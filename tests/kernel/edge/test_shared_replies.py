"""Every watcher of an event is handed one reply, and each of its encodings is made once."""

from __future__ import annotations

from foundry.kernel.edge.shared_replies import JSON, PROTO, SharedReplies


class Item:
    def __init__(self, text: str) -> None:
        self.text = text


class Counted:
    """An encoder that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, message: list[str]) -> str:
        self.calls += 1
        return "encoded " + message[0]


def test_the_same_item_gets_the_same_reply_encoded_once_per_form():
    shared, item = SharedReplies(), Item("a" * 100)
    first = shared.reply(item, 100, lambda i: [i.text])
    assert shared.reply(item, 100, lambda i: [i.text]) is first
    to_proto, to_json = Counted(), Counted()
    for _ in range(50):  # fifty watchers
        assert shared.encoded(first, PROTO, to_proto) == "encoded " + "a" * 100
        shared.encoded(first, JSON, to_json)
    assert (to_proto.calls, to_json.calls) == (1, 1)
    assert shared.held_bytes == 100 + 2 * len("encoded " + "a" * 100)


def test_a_message_no_one_registered_is_encoded_each_time():
    shared, encode = SharedReplies(), Counted()
    message = ["b"]
    shared.encoded(message, PROTO, encode)
    shared.encoded(message, PROTO, encode)
    assert encode.calls == 2
    assert len(shared) == 0


def test_the_oldest_replies_go_past_the_budget_and_are_made_again():
    shared = SharedReplies(budget=1_000, entries=100)
    items = [Item(str(n)) for n in range(5)]
    replies = [shared.reply(item, 300, lambda i: [i.text]) for item in items]
    assert len(shared) == 3  # 900 bytes: the two oldest went
    assert shared.held_bytes == 900
    assert shared.reply(items[4], 300, lambda i: [i.text]) is replies[4]
    again = shared.reply(items[0], 300, lambda i: [i.text])
    assert again is not replies[0]
    assert again == replies[0]
    encode = Counted()  # an encoding of a reply that went is made, not kept
    shared.encoded(replies[1], PROTO, encode)
    shared.encoded(replies[1], PROTO, encode)
    assert encode.calls == 2


def test_the_count_of_replies_is_bounded_and_one_over_the_budget_is_kept_while_newest():
    shared = SharedReplies(budget=1_000, entries=2)
    for n in range(4):
        shared.reply(Item(str(n)), 1, lambda i: [i.text])
    assert len(shared) == 2
    huge = Item("huge")
    reply = shared.reply(huge, 5_000, lambda i: [i.text])
    assert len(shared) == 1
    assert shared.held_bytes == 5_000
    assert shared.reply(huge, 5_000, lambda i: [i.text]) is reply
    shared.reply(Item("next"), 1, lambda i: [i.text])
    assert len(shared) == 1
    assert shared.held_bytes == 1
