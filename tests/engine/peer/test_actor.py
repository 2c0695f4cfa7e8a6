"""The peer's actor: offers and candidates (mDNS ones off the actor), the session's life, liveness, a move to another worker, the end."""

import pytest
from aiortc import RTCBundlePolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from engine.common.mailbox import MailboxOverflow
from engine.common.protocol import (
    PeerStateChange,
    SessionClose,
    SessionConnect,
    SessionOpen,
    TrackStatusChange,
)
from engine.common.settings import HostSettings
from engine.metrics import SessionOutcome
from engine.peer import PeerActor, SignalingError
from engine.peer.events import MdnsNameResolved
from engine.peer.mdns import MDNS_NAMES_PER_PC, MDNS_RESOLUTIONS_AT_ONCE
from tests.support.link import until
from tests.support.logs import warnings_logged
from tests.support.peers import (
    PC_ID,
    PeerRig,
    TestWorker,
    mdns_candidate,
    mdns_name,
    trickled,
    without_end_of_candidates,
)


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


# ---- mDNS candidates: resolved off the actor ----


def remote_hosts(pc: RTCPeerConnection) -> set[str]:
    """The hosts of the remote candidates the connection's (bundled) ICE transport has taken; mDNS ones keep their name."""
    return {c.ip for c in pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()}


async def test_mdns_candidates_no_one_answers_do_not_stall_the_actor():
    async with PeerRig(mdns_resolve_timeout_s=60) as rig:
        await rig.connect(without_end_of_candidates)
        [(_, pc)] = rig.made
        unanswered = [mdns_candidate(n) for n in range(50)]
        await rig.actor.add_candidates(unanswered)
        # The PATCH is answered while the names are looked up, a few at a time.
        names = [mdns_name(n) for n in range(50)]
        assert rig.mdns.pending == set(names[:MDNS_RESOLUTIONS_AT_ONCE])

        # Meanwhile the actor serves the data channel, another PATCH and a renegotiation.
        rig.client.send_signalling({"type": "trackStatus", "receiver_index": 1, "enabled": False})
        await rig.worker.wait_for(TrackStatusChange)
        await rig.actor.add_candidates([trickled("1 1 udp 2130706431 127.0.0.1 9 typ host")])
        assert (await rig.client.negotiate(rig.actor, rewrite=without_end_of_candidates))["pc_id"] == PC_ID
        assert "127.0.0.1" in remote_hosts(pc)
        assert rig.mdns.asked == names[:MDNS_RESOLUTIONS_AT_ONCE]
        assert rig.mdns.pending == set(names[:MDNS_RESOLUTIONS_AT_ONCE])


async def test_an_answered_name_adds_its_candidates_and_past_the_bound_names_are_dropped_with_one_line():
    names = [mdns_name(n) for n in range(MDNS_NAMES_PER_PC + 4)]
    with warnings_logged() as records:
        async with PeerRig() as rig:
            await rig.connect(without_end_of_candidates)
            [(_, pc)] = rig.made
            for name in names:
                rig.mdns.publish(name, "127.0.0.1")
            await rig.actor.add_candidates([mdns_candidate(n, port=20000 + n) for n in range(len(names))])
            await until(lambda: remote_hosts(pc) >= set(names[:MDNS_NAMES_PER_PC]))
            assert rig.mdns.asked == names[:MDNS_NAMES_PER_PC]
            assert not remote_hosts(pc) & set(names[MDNS_NAMES_PER_PC:])
            assert pc.connectionState == "connected"
    [record] = [r for r in records if "mDNS" in r["message"]]
    assert f"more than {MDNS_NAMES_PER_PC} mDNS names for one peer connection" in record["message"]


async def test_an_offers_mdns_candidates_are_resolved_after_its_answer_and_its_end_of_candidates_waits_for_them():
    named = "".join(f"a=candidate:{n} 1 udp 2122260223 {mdns_name(n)} {20000 + n} typ host\r\n" for n in (0, 1))

    def with_mdns_candidates(sdp: str) -> str:
        # The offer keeps its end of candidates: it must wait for the names.
        return sdp.replace("a=mid:0\r\n", "a=mid:0\r\n" + named)

    async with PeerRig(mdns_resolve_timeout_s=60) as rig:
        await rig.connect(with_mdns_candidates)
        [(_, pc)] = rig.made
        assert rig.mdns.pending == {mdns_name(0), mdns_name(1)}
        assert mdns_name(0) not in remote_hosts(pc)

        # Had the end of candidates been applied, aiortc would ignore these.
        rig.mdns.publish(mdns_name(0), "127.0.0.1")
        await until(lambda: mdns_name(0) in remote_hosts(pc))
        rig.mdns.publish(mdns_name(1), "127.0.0.1")
        await until(lambda: mdns_name(1) in remote_hosts(pc))
        # Now it is: a later candidate is ignored, and a later name not even asked for.
        await rig.actor.add_candidates([trickled("1 1 udp 2130706431 127.0.0.2 9 typ host"), mdns_candidate(2)])
        assert "127.0.0.2" not in remote_hosts(pc)
        assert rig.mdns.asked == [mdns_name(0), mdns_name(1)]


async def test_a_name_answered_for_a_replaced_connection_is_not_added_to_its_successor():
    async with PeerRig(mdns_resolve_timeout_s=60) as rig:
        await rig.connect(without_end_of_candidates)
        await rig.actor.add_candidates([mdns_candidate(0)])
        await until(lambda: rig.mdns.pending == {mdns_name(0)})
        await rig.client.restart(rig.actor, rewrite=without_end_of_candidates)
        (_, old), (_, new) = rig.made
        # The restart cancelled the old connection's lookup.
        await until(lambda: rig.mdns.cancelled == [mdns_name(0)])

        # The new connection asks for the same name; an answer meant for the old one arrives first.
        await rig.actor.add_candidates([mdns_candidate(0)])
        await until(lambda: rig.mdns.pending == {mdns_name(0)})
        rig.actor.mailbox.put(MdnsNameResolved(old, mdns_name(0), "127.0.0.9"))
        await rig.actor.add_candidates([])
        assert mdns_name(0) not in remote_hosts(new)
        assert rig.mdns.pending == {mdns_name(0)}

        rig.mdns.publish(mdns_name(0), "127.0.0.1")
        await until(lambda: mdns_name(0) in remote_hosts(new))


async def test_an_mdns_candidate_for_no_media_section_is_refused_with_its_request():
    async with PeerRig() as rig:
        await rig.connect(without_end_of_candidates)
        unplaced = mdns_candidate(0)
        unplaced.sdpMid = unplaced.sdpMLineIndex = None
        with pytest.raises(SignalingError, match="needs an sdpMid or an sdpMLineIndex"):
            await rig.actor.add_candidates([mdns_candidate(1), unplaced])
        assert rig.mdns.asked == []


async def test_lookups_are_cancelled_when_the_session_ends():
    async with PeerRig(mdns_resolve_timeout_s=60) as rig:
        await rig.connect(without_end_of_candidates)
        await rig.actor.add_candidates([mdns_candidate(n) for n in range(MDNS_RESOLUTIONS_AT_ONCE + 2)])
        await until(lambda: len(rig.mdns.pending) == MDNS_RESOLUTIONS_AT_ONCE)
        rig.actor.close("test over", SessionOutcome.HOST_STOPPED)
        await until(lambda: rig.actor.ended)
        await until(lambda: len(rig.mdns.cancelled) == MDNS_RESOLUTIONS_AT_ONCE)
        assert rig.mdns.pending == set()
        assert len(rig.mdns.asked) == MDNS_RESOLUTIONS_AT_ONCE
