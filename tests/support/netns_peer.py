"""One call of a :class:`~tests.support.client.TestPeer`, run as a program inside a test's network namespace.

``ip netns exec NS python -m tests.support.netns_peer BASE_URL --address A --seconds S``
calls the host through ``/start`` (taking the ICE servers it hands out),
receives the bot's echo for ``S`` seconds and prints one JSON object: the
candidates of the host's answer, the ICE servers of ``/start``, the candidate
pair in use, the frames received, the NACKs and PLIs each way and the RTP
statistics. A call that does not connect prints ``{"error": ...}`` and exits 1.

It is a program of its own because aioice's choice of host addresses is
made for a whole process (``engine.ice.restrict_host_addresses``), and the
client's sockets must be born in the client's namespace.
"""

import argparse
import asyncio
import json
import time

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket

from tests.support.client import SAMPLE_RATE, TestPeer

#: Samples in one 20 ms audio frame at 48 kHz.
AUDIO_FRAME_SAMPLES = SAMPLE_RATE // 50


class FeedbackCounter:
    """Counts the RTCP feedback of this process's aiortc peers: NACKs and PLIs sent by receivers, and got by senders.

    aiortc's statistics have no NACK or PLI counts, so the methods that send
    and handle them are wrapped, only in this client process.
    """

    def __init__(self):
        self.nacks_sent = 0
        self.packets_nacked = 0
        self.plis_sent = 0
        self.nacks_received = 0
        self.plis_received = 0
        send_nack, send_pli, handle = (
            RTCRtpReceiver._send_rtcp_nack,
            RTCRtpReceiver._send_rtcp_pli,
            RTCRtpSender._handle_rtcp_packet,
        )
        counter = self

        async def counted_nack(receiver, media_ssrc, lost):
            counter.nacks_sent += 1
            counter.packets_nacked += len(lost)
            await send_nack(receiver, media_ssrc, lost)

        async def counted_pli(receiver, media_ssrc):
            counter.plis_sent += 1
            await send_pli(receiver, media_ssrc)

        async def counted_handle(sender, packet):
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                counter.nacks_received += 1
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                counter.plis_received += 1
            await handle(sender, packet)

        RTCRtpReceiver._send_rtcp_nack = counted_nack
        RTCRtpReceiver._send_rtcp_pli = counted_pli
        RTCRtpSender._handle_rtcp_packet = counted_handle


def candidates(sdp: str) -> list[dict]:
    """The ``a=candidate`` lines of an SDP: address, port, type."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            found.append({"address": fields[4], "port": int(fields[5]), "type": fields[7]})
    return found


def selected_pair(peer: TestPeer) -> dict:
    """The candidate pair ICE nominated (aioice keeps it in its connection)."""
    connection = peer.pc.sctp.transport.transport._connection
    pair = next(iter(connection._nominated.values()))
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "local": {"address": local.host, "port": local.port, "type": local.type, "transport": local.transport},
        "remote": {"address": remote.host, "port": remote.port, "type": remote.type},
    }


async def rtp_stats(peer: TestPeer) -> list[dict]:
    """aiortc's RTP statistics: what this peer received and lost, and what the host reports losing of ours."""
    report = await peer.pc.getStats()
    wanted = ("inbound-rtp", "remote-inbound-rtp")
    return [
        {key: value for key, value in vars(stats).items() if key not in ("timestamp", "id", "transportId")}
        for stats in report.values()
        if stats.type in wanted
    ]


async def call(base_url: str, address: str, seconds: float, request_data: dict, connect_timeout: float) -> dict:
    """Connect, receive for ``seconds``, and describe the call."""
    feedback = FeedbackCounter()
    async with TestPeer(
        base_url, use_start=True, ice_host_addresses=(address,), connect_timeout=connect_timeout, http_timeout=30
    ) as peer:
        started = time.monotonic()
        await peer.connect(request_data=request_data)
        connected_after = time.monotonic() - started
        await peer.wait_for_video_frames(1, timeout=connect_timeout)
        video_before, audio_before = peer.video_frame_count, peer.audio_samples_total
        window_start = time.monotonic()
        await asyncio.sleep(seconds)
        window = time.monotonic() - window_start
        video = peer.video_frame_count - video_before
        audio_frames = (peer.audio_samples_total - audio_before) / AUDIO_FRAME_SAMPLES
        keyframe_requests = feedback.plis_sent + feedback.plis_received
        # Any frame from now on came after every keyframe request so far, either way: the picture recovered.
        try:
            await peer.wait_for_video_frames(1, timeout=connect_timeout)
            recovered = True
        except TimeoutError:
            recovered = False
        return {
            "answer_candidates": candidates(peer.pc.remoteDescription.sdp),
            "ice_servers": [
                {"urls": server.urls, "username": server.username, "credential": server.credential}
                for server in peer.ice_servers
            ],
            "selected_pair": selected_pair(peer),
            "connected_after_s": round(connected_after, 3),
            "window_s": round(window, 3),
            "video_frames": video,
            "video_fps": round(video / window, 1),
            "audio_frames": round(audio_frames),
            "audio_frames_per_s": round(audio_frames / window, 1),
            "nacks_sent": feedback.nacks_sent,
            "packets_nacked": feedback.packets_nacked,
            "plis_sent": feedback.plis_sent,
            "nacks_received": feedback.nacks_received,
            "plis_received": feedback.plis_received,
            "keyframe_requests": keyframe_requests,
            "video_after_keyframe_requests": recovered,
            "rtp": await rtp_stats(peer),
            "errors": [repr(e) for e in peer.errors],
        }


def main() -> None:
    """Parse the command line, make the call, print its description."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--address", required=True, help="this namespace's address, for host candidates")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to receive media once it flows")
    parser.add_argument("--request-data", default="{}", help="the /start body, as JSON")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    args = parser.parse_args()
    try:
        result = asyncio.run(
            call(args.base_url, args.address, args.seconds, json.loads(args.request_data), args.connect_timeout)
        )
    except Exception as e:  # the test reads the reason from the output
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        raise SystemExit(1) from e
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
