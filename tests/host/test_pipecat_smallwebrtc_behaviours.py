"""What Pipecat's own tests of its SmallWebRTC transport check, checked black-box on the real host.

Pipecat (pipecat-ai/pipecat) tests its connection, request handler and
transport from inside, with mocks of aiortc. Here the same behaviours are
asked of the running host, through a real aiortc client speaking the browser's
contract (``TestPeer``) and real Pipecat bots (``tests.support.bots``):

- ``tests/test_smallwebrtc_request_handler.py``: Firefox's end-of-candidates
  markers (an empty ``candidate``, one per m-line, mixed with real candidates)
  are taken as the end of candidates, not refused. Firefox also trickles every
  candidate (its offer carries none) and ends each m-line's as that m-line's
  gathering ends, so the markers of the m-lines the answer bundles onto the
  first one's transport may come before that transport's own candidates: the
  host must not end that transport's candidates then (Pipecat's own handler
  and aiortc would), and takes the marker in the browser's own form
  (``sdpMid``, ``sdpMLineIndex``) as well as in Pipecat's clients'.
- pipecat-ai/pipecat#5112 (``SmallWebRTCConnection`` and
  ``SmallWebRTCClient.send_message``): messages a bot sends before the data
  channel is open are delivered once it opens, in order, before what follows;
  and nothing is sent once the transport is closing.
- pipecat-ai/pipecat#4491 (``SmallWebRTCClient.read_audio_frame`` and
  ``read_video_frame`` on a dead track): an input that has ended does not spin
  its reader, and reading resumes when a new negotiation brings media again.
  Measured as the worker's CPU time while its peer sends nothing, against the
  same worker's with no session at all (a spinning reader costs a core).
"""

import asyncio

import pytest

from tests.bench.procstat import cpu_seconds
from tests.support.client import TestPeer, bars_match, dominant_frequency
from tests.support.host import SMALL_VIDEO, HostProcess

#: How long the worker's CPU time is measured, idle and with a peer that sends nothing.
CPU_WINDOW_S = 3.0
#: What a peer that sends nothing may cost its worker beyond idling, in cores (a busy loop costs one).
DEAD_INPUT_MAX_CORES = 0.1


@pytest.fixture(scope="module")
def host():
    with HostProcess(1, "--bot", "tests.support.bots:bot") as running:
        yield running
        print(running.log()[-6000:])


def body(bot: str | None = None) -> dict:
    return {**SMALL_VIDEO, "bot": bot} if bot else SMALL_VIDEO


class FirefoxLikePeer(TestPeer):
    """Trickles ICE as Firefox does: an offer without candidates, and an end-of-candidates marker per m-line.

    Between the answer and applying it (so before any connectivity check can
    reach the host), it sends the markers of the m-lines after the first, in
    the form of the browser's own ``RTCIceCandidate.toJSON()``; then its
    candidates with the first m-line's marker, in the transport's form.
    """

    def _offer_sdp(self, sdp: str) -> str:
        return "".join(
            f"{line}\r\n" for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))
        )

    async def _answer_arrived(self, answer: dict) -> None:
        ufrag = next(line.split(":", 1)[1] for line in self.pc.localDescription.sdp.splitlines() if line.startswith("a=ice-ufrag:"))
        later_mlines = [
            {"candidate": "", "sdpMid": str(index), "sdpMLineIndex": index, "usernameFragment": ufrag} for index in (1, 2, 3)
        ]
        assert await self.patch_candidates(later_mlines) == (200, {"status": "success"})
        first_mline = self.local_candidates() + [{"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}]
        assert await self.patch_candidates(first_mline) == (200, {"status": "success"})


async def test_firefox_end_of_candidates_markers_mixed_with_candidates_are_taken(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        candidate = peer.local_candidates()[0]
        # As Pipecat's test has it: real candidates, and a marker per mid (audio 0, video 1, data 3).
        markers = [{"candidate": "", "sdp_mid": mid, "sdp_mline_index": int(mid)} for mid in ("0", "1", "3")]
        mixed = [candidate, markers[0], {**candidate, "sdp_mid": "1", "sdp_mline_index": 1}, *markers[1:]]
        assert await peer.patch_candidates(mixed) == (200, {"status": "success"})
        # One marker a request, in the browser's own form too, and one naming no m-line.
        for marker in (
            {"candidate": "", "sdpMid": "2", "sdpMLineIndex": 2, "usernameFragment": "abcd"},
            {"candidate": "", "sdp_mid": None, "sdp_mline_index": None},
        ):
            assert await peer.patch_candidates([marker]) == (200, {"status": "success"})
        await peer.send_app_message({"type": "still-there"})
        await peer.wait_for_message(lambda m: m.get("echo") == {"type": "still-there"})
        await peer.wait_for_video_frames(3)


async def test_firefox_trickling_connects_whatever_m_line_ends_its_candidates_first(host):
    async with FirefoxLikePeer(host.base_url, patch_candidates_after_answer=False) as peer:
        await peer.connect(request_data=body())
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)


async def test_messages_a_bot_sends_before_the_channel_opens_come_first_and_in_order(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("greeting"))
        await peer.send_app_message({"type": "marker"})
        await peer.wait_for_message(lambda m: m.get("echo") == {"type": "marker"})
        received = [m.get("greeting", "echo") for m in peer.messages]
        assert received == [*range(20), "echo"], received


async def test_nothing_is_sent_once_the_transport_is_closing(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body("farewell"))
        await peer.send_app_message({"command": "leave"})
        await peer.wait_for_signalling("peerLeft")
        await peer.wait_for_channel_closed()
        pc_id = peer.pc_id
        # Once the channel is closed nothing more can come: the two sent while closing never did.
        assert [m for m in peer.messages if "farewell" in m] == [{"farewell": "before closing"}]
    # The bot sent them, quietly: its session ended on the worker without an error.
    host.wait_for(lambda workers: all(pc_id not in w["reported_sessions"] for w in workers), timeout=15)
    log = host.log()
    assert f"{pc_id}: the farewell bot sent its last two messages" in log
    assert f"session {pc_id}: bot failed" not in log


async def cpu_used(pid: int) -> float:
    """The CPU time ``pid`` uses in the next ``CPU_WINDOW_S``."""
    before = cpu_seconds(pid)
    await asyncio.sleep(CPU_WINDOW_S)
    return cpu_seconds(pid) - before


async def test_a_peer_whose_tracks_ended_costs_its_worker_nothing_until_a_new_negotiation_resumes_reading(host):
    host.wait_for(lambda workers: not any(w["sessions"] or w["reported_sessions"] for w in workers), timeout=15)
    [worker_pid] = host.worker_pids().values()
    idle = await cpu_used(worker_pid)
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=body())
        await peer.wait_for_video_frames(5)

        peer.stop_sending()
        dead = await cpu_used(worker_pid)
        print(f"worker CPU over {CPU_WINDOW_S} s: idle {idle:.2f} s, its peer's tracks ended {dead:.2f} s")
        assert dead - idle < DEAD_INPUT_MAX_CORES * CPU_WINDOW_S, (idle, dead)

        # restart_pc: a new peer connection, with new tracks, under the same session and bot.
        await peer.renegotiate(restart_pc=True)
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)
        audio = await peer.wait_for_audio(0.5)
        assert abs(dominant_frequency(audio, 48000) - 440) < 5
