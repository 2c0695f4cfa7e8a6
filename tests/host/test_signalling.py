"""Every signaling feature of the wire contract, against the real host and a real aiortc peer.

The bots come from ``tests.support.bots``, picked per session by the request body.
"""

import asyncio
import time

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from engine.ice import restrict_host_addresses
from tests.support.client import TestPeer, bars_match, dominant_frequency
from tests.support.host import SMALL_VIDEO, HostProcess, host_info

CLIENT_JITTER_BUFFER_FRAMES = 4
TIMERS = {
    "SMALLWEBRTC_HOST_PEER_LOST_CLOSE_S": "1",
    "SMALLWEBRTC_HOST_CONNECTING_TIMEOUT_S": "2",
    "SMALLWEBRTC_HOST_DATA_CHANNEL_TIMEOUT_S": "1",
    "SMALLWEBRTC_HOST_BOT_END_GRACE_S": "1",
}


@pytest.fixture(scope="module")
def host():
    with HostProcess(2, "--bot", "tests.support.bots:bot", env=TIMERS) as running:
        yield running
        print(running.log()[-6000:])


def body(bot: str | None = None) -> dict:
    return {**SMALL_VIDEO, "bot": bot} if bot else SMALL_VIDEO


async def test_client_renegotiation_keeps_the_session(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        pc_id = peer.pc_id
        await peer.wait_for_video_frames(3)
        await peer.renegotiate()
        assert peer.pc_id == pc_id
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)


async def test_restart_pc_keeps_pc_id_and_bot(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        worker_id = (await host_info(peer))["worker_id"]
        pc_id = peer.pc_id
        await peer.wait_for_video_frames(3)

        await peer.renegotiate(restart_pc=True)
        assert peer.pc_id == pc_id
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)
        audio = await peer.wait_for_audio(0.5)
        assert abs(dominant_frequency(audio, 48000) - 440) < 5
        # The same bot goes on: one session on the same worker, started once.
        workers = {w["worker_id"]: w for w in host.workers_status()}
        assert pc_id in workers[worker_id]["sessions"]
        assert host.log().count(f"session {pc_id} started") == 1


async def test_a_late_bot_starts_from_the_video_the_peer_already_sent_without_a_new_offer(host):
    # The engine kept the camera's frames since its keyframe until the bot captured it (Pipecat's transport asks for a new offer).
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("slow"))
        await peer.wait_for_video_frames(5)
        assert [m for m in peer.signalling if isinstance(m, dict) and m.get("type") == "renegotiate"] == []


async def test_a_bot_asking_for_a_new_offer_gets_one_under_the_same_pc_id(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("renegotiating"))
        await peer.wait_for_signalling("renegotiate", timeout=10)
        await peer.wait_for_video_frames(5)


async def test_app_messages_sent_before_the_bot_is_ready_are_delivered(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("slow"))
        await peer.send_app_message({"type": "early-bird"})
        echoed = await peer.wait_for_message(lambda m: "echo" in m, timeout=10)
        assert echoed["echo"] == {"type": "early-bird"}


async def test_a_muted_camera_stops_quietly_and_comes_back(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        await peer.wait_for_video_frames(5)
        await peer.send_track_status(1, False)
        await asyncio.sleep(0.5)
        muted_count = peer.video_frame_count
        await asyncio.sleep(3.0)
        # Nothing reaches the bot, so nothing is echoed (a frame or two may have been on the way).
        assert peer.video_frame_count - muted_count <= 2
        assert f"{peer.pc_id}: no camera frame" not in host.log()
        await peer.send_track_status(1, True)
        await peer.wait_for_video_frames(5, timeout=10)


async def test_a_bot_that_ends_sends_peer_left(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("ending"))
        await peer.wait_for_signalling("peerLeft", timeout=10)


async def test_a_bot_that_raises_ends_only_its_session(host):
    async with TestPeer(host.base_url) as failing:
        await failing.connect(request_data=body("raising"))
        await failing.wait_for_signalling("peerLeft", timeout=10)
    assert "bot failed: RuntimeError: this bot always fails" in host.log()
    # Both workers still take sessions.
    async with TestPeer(host.base_url) as first, TestPeer(host.base_url) as second:
        await asyncio.gather(first.connect(request_data=body()), second.connect(request_data=body()))
        await asyncio.gather(first.wait_for_video_frames(3), second.wait_for_video_frames(3))


async def test_a_bot_that_hangs_is_cancelled_once_its_peer_left(host):
    peer = TestPeer(host.base_url)
    await peer.connect(request_data=body("hanging"))
    pc_id = peer.pc_id
    await peer.close()
    host.wait_for(lambda workers: all(pc_id not in w["sessions"] and not w["reported_sessions"] for w in workers), 15)
    assert f"session {pc_id}: bot still running 1 s after its peer left; cancelling it" in host.log()


async def test_a_peer_that_stops_pinging_is_closed(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        pc_id = peer.pc_id
        await peer.stop_pings()
        started = time.monotonic()
        # 3 s of ping window, then 1 s more (SMALLWEBRTC_HOST_PEER_LOST_CLOSE_S) before closing.
        host.wait_for(lambda workers: all(pc_id not in w["sessions"] for w in workers), timeout=10)
        assert time.monotonic() - started > 3.0
        assert f"peer {pc_id}: session ends (peer lost (no keepalive))" in host.log()


async def test_a_client_without_data_channel_works(host):
    async with TestPeer(host.base_url, data_channel=False) as peer:
        await peer.connect(request_data=body())
        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, 48000) - 440) < 5
        await peer.wait_for_video_frames(5)
    assert "no data channel 1 s after connecting" in host.log()


async def offer_only(base_url: str) -> dict:
    """POST an offer from a peer that never applies the answer; returns the answer."""
    restrict_host_addresses(["127.0.0.1"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                return await r.json()
    finally:
        await pc.close()


async def test_a_peer_that_never_connects_is_closed(host):
    pc_id = (await offer_only(host.base_url))["pc_id"]
    # The answer is never applied: the engine's side stays "connecting" until its 2 s timeout.
    host.wait_for(lambda workers: all(pc_id not in w["sessions"] for w in workers), timeout=10)
    assert f"peer {pc_id}: session ends (no connection within the connecting timeout)" in host.log()


async def test_messages_a_bot_sends_as_it_starts_arrive_in_order(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("chatty"))
        await peer.send_app_message({"type": "marker"})
        await peer.wait_for_message(lambda m: "echo" in m)
        early = [m["index"] for m in peer.messages if m.get("type") == "early"]
        # The bot starts once the peer connects, mostly after the channel opened: then all 60
        # arrive. What comes before it opens waits, 50 at most (tests/engine/peer/test_data_channel.py).
        assert early[:50] == list(range(50)) and early == sorted(early)


async def test_the_screen_share_is_source_screen_video(host):
    async with TestPeer(host.base_url, send_video=False, screen_video=True) as peer:
        await peer.connect(request_data=body("screen"))
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)


async def test_a_bot_written_for_pipecats_runner(host):
    async with TestPeer(host.base_url, use_start=True) as peer:
        await peer.connect(request_data=body("runner"))
        hello = await peer.wait_for_message(lambda m: "session_id" in m)
        assert hello == {"body": body("runner"), "session_id": peer.session_id, "transport": "transport.bot_transport"}
        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, 48000) - 440) < 5
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1])


async def test_an_interruption_lets_little_queued_audio_through(host):
    async with TestPeer(host.base_url, send_video=False) as peer:
        await peer.connect(request_data=body("speaker"))
        await peer.send_app_message({"command": "speak"})
        await asyncio.sleep(1.5)
        assert peer.audio_levels[-1][1] > 1000, "the bot is not speaking"
        await peer.send_app_message({"command": "interrupt"})
        await peer.wait_for_message(lambda m: m.get("interrupting"))
        interrupted_at = time.monotonic()
        await asyncio.sleep(1.0)
        after = [level for t, level in peer.audio_levels if t > interrupted_at and level > 1000]
        print(f"tone frames after the interruption: {len(after)} (20 ms each)")
        # aiortc's receiver holds 4 frames before it plays any (its audio jitter
        # buffer's prefetch), so those were on the wire already; past them, at
        # most 40 ms of what the engine had queued may still come.
        assert len(after) <= CLIENT_JITTER_BUFFER_FRAMES + 2


@pytest.fixture(scope="module")
def single_host():
    with HostProcess(1, "--connection-mode", "single", "--esp32") as running:
        yield running


async def test_single_mode_takes_one_peer(single_host):
    async with TestPeer(single_host.base_url) as first:
        await first.connect(request_data=body())
        second = TestPeer(single_host.base_url)
        with pytest.raises(Exception, match="400"):
            await second.connect(request_data=body())
        await second.close()
        # The first peer may still renegotiate.
        await first.renegotiate()
        await first.wait_for_video_frames(3)


async def test_esp32_mode_munges_the_answer(single_host):
    # The single peer of the test before may still be ending.
    single_host.wait_for(lambda workers: not any(w["sessions"] for w in workers), timeout=10)
    answer = await offer_only(single_host.base_url)
    assert "a=fingerprint:sha-256" in answer["sdp"]
    assert "sha-384" not in answer["sdp"] and "sha-512" not in answer["sdp"]
