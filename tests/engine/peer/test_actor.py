"""The peer's actor: offers and candidates, the session's life, liveness, a move to another worker, the end."""

import pytest
from aiortc import RTCBundlePolicy, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from engine.common.mailbox import MailboxOverflow
from engine.common.protocol import (
    PeerStateChange,
    SessionClose,
    SessionConnect,
    SessionOpen,
)
from engine.common.settings import HostSettings
from engine.metrics import SessionOutcome
from engine.peer import PeerActor, SignalingError
from tests.support.link import until
from tests.support.peers import PC_ID, PeerRig, TestWorker


def loopback_candidate():
    candidate = candidate_from_sdp("1 1 udp 2130706431 127.0.0.1 9 typ host")
    candidate.sdpMid, candidate.sdpMLineIndex = "0", 0
    return candidate


async def test_an_offer_is_answered_with_the_pc_id():
    async with PeerRig() as rig:
        answer = await rig.connect()
        assert answer["pc_id"] == PC_ID and answer["type"] == "answer"
        [(config, pc)] = rig.made
        # Only the configured ICE servers (none), and one transport for every transceiver.
        assert config.iceServers == [] and config.bundlePolicy == RTCBundlePolicy.MAX_BUNDLE
        assert pc.connectionState == "connected"


async def test_a_bad_offer_raises_signaling_error_and_the_session_goes_on():
    async with PeerRig() as rig:
        with pytest.raises(SignalingError, match="invalid offer SDP"):
            await rig.actor.offer("v=0\r\n", "offer", restart_pc=False)
        with pytest.raises(SignalingError, match="type 'offer'"):
            await rig.actor.offer("v=0\r\n", "answer", restart_pc=False)
        assert (await rig.connect())["pc_id"] == PC_ID


async def test_candidates_for_a_live_connection_are_taken_and_after_it_ended_ignored():
    async with PeerRig(restart_grace_s=30) as rig:
        await rig.connect()
        await rig.actor.add_candidates([loopback_candidate(), None])
        await rig.client.close()
        [(_, pc)] = rig.made
        await until(lambda: pc.connectionState == "closed")
        # The connection may still be restarted: the session waits, and candidates go nowhere.
        await rig.actor.add_candidates([loopback_candidate()])
        assert not rig.actor.ended


async def test_a_restart_keeps_the_pc_id_on_a_new_connection():
    async with PeerRig() as rig:
        await rig.connect()
        answer = await rig.client.restart(rig.actor)
        assert answer["pc_id"] == PC_ID
        await rig.client.wait_until_open()
        (_, first), (_, second) = rig.made
        assert first.connectionState == "closed" and second.connectionState == "connected"
        assert rig.worker.messages(SessionClose) == []


async def test_a_connection_not_restarted_within_the_grace_ends_the_session():
    async with PeerRig(restart_grace_s=0.2) as rig:
        await rig.connect()
        await rig.client.close()
        [close] = await rig.worker.wait_for(SessionClose)
        assert close.reason == "peer connection closed"
        assert rig.ended == [rig.actor] and rig.sessions_ended(SessionOutcome.PEER_LEFT) == 1
        with pytest.raises(SignalingError, match="has ended"):
            await rig.actor.add_candidates([loopback_candidate()])


async def test_a_peer_without_keepalives_is_lost():
    async with PeerRig(ping_window_s=0.1, peer_lost_close_s=0) as rig:
        await rig.connect()
        rig.client.channel.send("ping: 1")
        [close] = await rig.worker.wait_for(SessionClose)
        assert close.reason == "peer lost (no keepalive)"
        assert rig.sessions_ended(SessionOutcome.PEER_LOST) == 1


async def test_close_tells_the_worker_and_the_peer():
    async with PeerRig() as rig:
        await rig.connect()
        rig.actor.close("host shutting down", SessionOutcome.HOST_STOPPED)
        await rig.client.wait_for(lambda _: {"type": "peerLeft"} in rig.client.signalling())
        [close] = await rig.worker.wait_for(SessionClose)
        assert close == SessionClose(PC_ID, "host shutting down")
        assert rig.actor.ended and rig.ended == [rig.actor]
        assert rig.sessions_ended(SessionOutcome.HOST_STOPPED) == 1
        with pytest.raises(SignalingError, match="has ended"):
            await rig.actor.offer("v=0\r\n", "offer", restart_pc=False)


async def test_the_bot_ending_closes_the_peer_without_telling_the_worker_again():
    async with PeerRig() as rig:
        await rig.connect()
        rig.from_bot(SessionClose(PC_ID, "bot finished"))
        await rig.client.wait_for(lambda _: {"type": "peerLeft"} in rig.client.signalling())
        await until(lambda: rig.actor.ended)
        assert rig.worker.messages(SessionClose) == []
        assert rig.sessions_ended(SessionOutcome.BOT_ENDED) == 1


async def test_move_to_opens_the_session_on_the_new_worker():
    async with PeerRig() as rig, TestWorker("worker-2") as second:
        await rig.connect()
        rig.from_bot(SessionConnect(PC_ID))
        await rig.worker.wait_for(PeerStateChange, lambda m: m.state == "connected")

        rig.actor.move_to(second.handle)
        [opening] = await second.wait_for(SessionOpen)
        assert opening == rig.actor.opening and rig.actor.worker is second.handle
        # The fresh bot hears of the peer once it is ready, as the first one did.
        rig.from_bot(SessionConnect(PC_ID))
        await second.wait_for(PeerStateChange, lambda m: m.state == "connected")
        assert rig.worker.messages(SessionOpen) == [rig.actor.opening]


async def test_the_bot_starts_once_the_peer_connects():
    async with PeerRig() as rig:
        await rig.client.pc.setLocalDescription(await rig.client.pc.createOffer())
        offer = rig.client.pc.localDescription
        answer = await rig.actor.offer(offer.sdp, offer.type, restart_pc=False)
        # Answered, not yet connected: no bot.
        assert rig.worker.messages(SessionOpen) == [] and rig.actor.bot_started_at is None
        await rig.client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        assert await rig.worker.wait_for(SessionOpen) == [rig.actor.opening]


async def test_an_offer_that_never_connects_ends_at_the_deadline_without_a_bot():
    async with PeerRig(connecting_timeout_s=0.5) as rig:
        await rig.client.pc.setLocalDescription(await rig.client.pc.createOffer())
        offer = rig.client.pc.localDescription
        # The client never applies the answer, so it never answers ICE checks.
        await rig.actor.offer(offer.sdp, offer.type, restart_pc=False)
        await until(lambda: rig.actor.ended)
        assert rig.sessions_ended(SessionOutcome.CONNECT_TIMEOUT) == 1
        assert rig.worker.received == []


async def test_a_session_moved_before_its_peer_connects_starts_its_bot_on_the_new_worker_only():
    async with PeerRig() as rig, TestWorker("worker-2") as second:
        await rig.client.pc.setLocalDescription(await rig.client.pc.createOffer())
        offer = rig.client.pc.localDescription
        answer = await rig.actor.offer(offer.sdp, offer.type, restart_pc=False)
        rig.actor.move_to(second.handle)
        await until(lambda: rig.actor.worker is second.handle)
        assert second.messages(SessionOpen) == []
        await rig.client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        assert await second.wait_for(SessionOpen) == [rig.actor.opening]
        assert rig.worker.received == []


async def test_an_offer_with_more_media_sections_than_taken_is_refused_before_aiortc_sees_it():
    async with PeerRig(max_media_sections=3) as rig:
        with pytest.raises(SignalingError, match="the offer has 4 media sections, more than the 3 taken"):
            await rig.client.negotiate(rig.actor)
        assert rig.made == []


async def test_the_offers_candidates_count_toward_the_peer_total_and_repeats_are_free():
    async with PeerRig(max_candidates_per_peer=6) as rig:
        await rig.connect()
        offered = [
            candidate_from_sdp(line.removeprefix("a=candidate:"))
            for line in rig.client.pc.localDescription.sdp.splitlines()
            if line.startswith("a=candidate:")
        ]
        for candidate in offered:
            candidate.sdpMid, candidate.sdpMLineIndex = "0", 0
        distinct = len({line for line in rig.client.pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")})
        assert 0 < distinct < 6
        await rig.actor.add_candidates([*offered, *offered, None, None])
        fresh = [candidate_from_sdp(f"1 1 udp 2130706431 127.0.0.1 {port} typ host") for port in range(1, 8)]
        for candidate in fresh:
            candidate.sdpMid, candidate.sdpMLineIndex = "0", 0
        await rig.actor.add_candidates(fresh[: 6 - distinct])
        with pytest.raises(SignalingError, match="more than 6 ICE candidates for one peer connection"):
            await rig.actor.add_candidates(fresh[6 - distinct :])
        await rig.actor.add_candidates(offered)
        assert not rig.actor.ended


async def test_close_and_move_get_through_a_mailbox_that_is_full():
    async with TestWorker("worker-1") as first, TestWorker("worker-2") as second:
        rig = PeerRig()
        actor = PeerActor(SessionOpen(PC_ID, "runner-1"), HostSettings(), first.handle, rig.metrics, lambda _: None)
        # A reader this far behind is stuck; what ends or moves its session must still reach it.
        with pytest.raises(MailboxOverflow):
            while True:
                actor.mailbox.put("work")
        actor.move_to(second.handle)
        actor.close("test", SessionOutcome.HOST_STOPPED)
        queued = []
        while (item := actor.mailbox.get_nowait()) is not None:
            queued.append(type(item).__name__)
        assert queued[-2:] == ["_MoveTo", "Close"]
