"""The bounded mailbox: control order, drop policies, fairness, overflow."""

import asyncio

import pytest

from engine.common.mailbox import Mailbox, MailboxOverflow


def drain(mailbox: Mailbox) -> list:
    items = []
    while (item := mailbox.get_nowait()) is not None:
        items.append(item)
    return items


def test_control_first_and_in_order():
    mailbox = Mailbox("test")
    mailbox.put_latest("video", "v1")
    mailbox.put("c1")
    mailbox.put("c2")
    assert drain(mailbox) == ["c1", "c2", "v1"]


def test_latest_keeps_only_the_newest_and_counts_drops():
    mailbox = Mailbox("test")
    for frame in range(5):
        mailbox.put_latest("video", frame)
    assert drain(mailbox) == [4]
    assert mailbox.dropped["video"] == 4


def test_bounded_drops_the_oldest():
    mailbox = Mailbox("test")
    for frame in range(10):
        mailbox.put_bounded("audio", frame, 3)
    assert drain(mailbox) == [7, 8, 9]
    assert mailbox.dropped["audio"] == 7


def test_lanes_take_turns():
    mailbox = Mailbox("test")
    for i in range(3):
        mailbox.put_bounded("a", f"a{i}", 10)
        mailbox.put_bounded("b", f"b{i}", 10)
    assert drain(mailbox) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_control_overflow_raises():
    mailbox = Mailbox("test", control_limit=2)
    mailbox.put(1)
    mailbox.put(2)
    with pytest.raises(MailboxOverflow, match="test"):
        mailbox.put(3)


def test_what_must_get_through_gets_through_a_full_mailbox_in_order():
    mailbox = Mailbox("m", control_limit=2)
    mailbox.put("a")
    mailbox.put("b")
    with pytest.raises(MailboxOverflow):
        mailbox.put("c")
    mailbox.put_always("close")
    assert drain(mailbox) == ["a", "b", "close"]


def test_discard_lanes():
    mailbox = Mailbox("test")
    mailbox.put_latest(("s1", "camera"), "x")
    mailbox.put_latest(("s2", "camera"), "y")
    mailbox.discard_lanes(lambda lane: lane[0] == "s1")
    assert drain(mailbox) == ["y"]


async def test_get_waits_for_an_item():
    mailbox = Mailbox("test")
    getter = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    mailbox.put_latest("video", "frame")
    assert await asyncio.wait_for(getter, 1) == "frame"
