"""The peer's "chat" data channel: keepalives, signalling, app messages held either way until their reader is there."""

import asyncio
import contextlib
import json

from engine.common.protocol import (
    AppMessageIn,
    AppMessageOut,
    PeerRenegotiate,
    PeerStateChange,
    SessionConnect,
    TrackStatusChange,
)
from engine.peer.data_channel import MAX_OUTGOING_QUEUE
from tests.support.logs import warnings_logged
from tests.support.peers import PC_ID, PeerRig


def track_status(receiver_index, enabled) -> dict:
    return {"type": "trackStatus", "receiver_index": receiver_index, "enabled": enabled}


async def test_pings_keep_the_peer_connected_and_without_them_the_bot_hears_it_is_disconnected():
    async with PeerRig(ping_window_s=1.0, peer_lost_close_s=60) as rig:
        await rig.connect()
        rig.from_bot(SessionConnect(PC_ID))
        await rig.worker.wait_for(PeerStateChange, lambda m: m.state == "connected")
        # A ping every 0.1 s through a few liveness ticks (0.5 s apart), then none.
        for ping in range(20):
            rig.client.channel.send(f"ping: {ping}")
            await asyncio.sleep(0.1)
        assert [m.state for m in rig.worker.messages(PeerStateChange)] == ["connected"]
        await rig.worker.wait_for(PeerStateChange, lambda m: m.state == "disconnected")

        rig.client.channel.send("ping: 20")
        await rig.worker.wait_for(PeerStateChange, lambda m: m.state == "connected", count=2)
        assert [m.state for m in rig.worker.messages(PeerStateChange)] == ["connected", "disconnected", "connected"]


async def test_track_status_reaches_the_worker_and_malformed_ones_are_ignored():
    async with PeerRig() as rig:
        await rig.connect()
        rig.client.channel.send("{this is not json")
        for malformed in (
            track_status(9, False),
            track_status(1, "no"),
            {"type": "somethingElse"},
            "trackStatus",
        ):
            rig.client.send_signalling(malformed)
        rig.client.send_signalling(track_status(1, False))
        rig.client.send_signalling(track_status(2, True))
        await rig.worker.wait_for(TrackStatusChange, count=2)
        assert rig.worker.messages(TrackStatusChange) == [
            TrackStatusChange(PC_ID, 1, False),
            TrackStatusChange(PC_ID, 2, True),
        ]


async def test_app_messages_wait_for_the_bot_then_arrive_in_order():
    async with PeerRig() as rig:
        await rig.connect()
        early = [json.dumps({"n": n}) for n in range(3)]
        for message in early:
            rig.client.channel.send(message)
        # Once this has reached the worker, the messages before it have been held.
        rig.client.send_signalling(track_status(1, True))
        await rig.worker.wait_for(TrackStatusChange)
        assert rig.worker.messages(AppMessageIn) == []

        rig.from_bot(SessionConnect(PC_ID))
        await rig.worker.wait_for(AppMessageIn, count=3)
        rig.client.channel.send(json.dumps({"n": 3}))
        await rig.worker.wait_for(AppMessageIn, count=4)
        kinds = [type(message).__name__ for message, _ in rig.worker.received]
        assert kinds[kinds.index("PeerStateChange") :] == ["PeerStateChange"] + ["AppMessageIn"] * 4
        assert [m.json for m in rig.worker.messages(AppMessageIn)] == [*early, json.dumps({"n": 3})]


async def test_messages_for_the_peer_wait_for_the_channel_in_order_at_most_50():
    async with PeerRig() as rig:
        sent = [json.dumps({"n": n}) for n in range(MAX_OUTGOING_QUEUE + 10)]
        for message in sent:
            rig.from_bot(AppMessageOut(PC_ID, message))
        await rig.connect()
        after = json.dumps({"after": True})
        rig.from_bot(AppMessageOut(PC_ID, after))
        await rig.client.wait_for(lambda received: after in received)
        assert rig.client.received == [*sent[:MAX_OUTGOING_QUEUE], after]


async def test_a_renegotiation_is_asked_for_once_while_one_is_under_way():
    async with PeerRig() as rig:
        await rig.connect()
        rig.from_bot(PeerRenegotiate(PC_ID))
        rig.from_bot(PeerRenegotiate(PC_ID))
        await rig.client.wait_for(lambda _: rig.client.signalling())
        await rig.client.negotiate(rig.actor)
        # Right after the answer the guard holds too.
        rig.from_bot(PeerRenegotiate(PC_ID))
        marker = json.dumps({"marker": True})
        rig.from_bot(AppMessageOut(PC_ID, marker))
        await rig.client.wait_for(lambda received: marker in received)
        assert rig.client.signalling() == [{"type": "renegotiate"}]


async def test_oversized_binary_deep_and_malformed_messages_are_ignored_with_one_line_each():
    with warnings_logged() as records:
        async with PeerRig(max_data_channel_message_bytes=1024) as rig:
            await rig.connect()
            rig.client.channel.send(b"\x00binary")
            rig.client.channel.send(json.dumps({"big": "x" * 2000}))
            rig.client.channel.send("[" * 1000)  # too deep for Python's json itself
            nested: object = 1
            for _ in range(40):
                nested = [nested]
            rig.client.channel.send(json.dumps(nested))
            for malformed in (track_status(True, True), track_status(1.0, True), track_status("1", True)):
                rig.client.send_signalling(malformed)
            rig.client.send_signalling(track_status(2, True))
            await rig.worker.wait_for(TrackStatusChange)
            assert rig.worker.messages(TrackStatusChange) == [TrackStatusChange(PC_ID, 2, True)]
            dropped = {
                reason: rig.metrics.registry.get_sample_value("smallwebrtc_data_channel_dropped_total", {"reason": reason})
                for reason in ("binary", "too_large", "too_deep")
            }
            assert dropped == {"binary": 1, "too_large": 1, "too_deep": 2}
    ignored = [r["message"] for r in records if "ignoring" in r["message"]]
    assert len(ignored) == 7, ignored
    assert all(r["exception"] is None for r in records)
    assert "binary" in ignored[0] and "over 1024 bytes" in ignored[1]
    assert "too deep to parse" in ignored[2] and "deeper than 32" in ignored[3]


async def test_a_flood_of_messages_from_the_peer_is_dropped_and_counted():
    with warnings_logged() as records:
        async with PeerRig(max_data_channel_messages_per_s=5) as rig:
            await rig.connect()
            rig.from_bot(SessionConnect(PC_ID))
            await rig.worker.wait_for(PeerStateChange, lambda m: m.state == "connected")
            for n in range(100):
                rig.client.channel.send(json.dumps({"n": n}))
            # Once the bucket has refilled, a message goes through again.
            await asyncio.sleep(1.0)
            rig.client.channel.send(json.dumps({"after": True}))
            await rig.worker.wait_for(AppMessageIn, lambda m: "after" in m.json)
            passed = len(rig.worker.messages(AppMessageIn)) - 1
            flood = rig.metrics.registry.get_sample_value("smallwebrtc_data_channel_dropped_total", {"reason": "flood"})
    assert 5 <= passed < 100 and passed + flood == 100
    [warning] = [r["message"] for r in records if "dropped over 5 a second" in r["message"]]
    assert "peer pc-test: 1 messages" in warning


async def test_messages_for_a_peer_whose_send_buffer_is_full_are_dropped():
    big = "x" * 10_000
    with warnings_logged() as records:
        async with PeerRig(max_data_channel_buffered_bytes=65536) as rig:
            await rig.connect()
            # One mailbox pass sends them all: aiortc has not flushed any before the buffer is full.
            for _ in range(100):
                rig.from_bot(AppMessageOut(PC_ID, big))
            for n in range(100):
                marker = json.dumps({"marker": n})
                rig.from_bot(AppMessageOut(PC_ID, marker))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await rig.client.wait_for(lambda received: marker in received)
                    break
            assert 65536 // len(big) <= rig.client.received.count(big) < 100
    assert any("while its send buffer held 65536 bytes" in r["message"] for r in records)
