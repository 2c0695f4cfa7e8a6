"""The engine's reach into aiortc's and aioice's private state: every member it uses is still there, and each reach still works.

When an aiortc or aioice upgrade renames or reshapes one of them, the first
test fails naming the member and the versions; the others show what the
engine gets from each: frames handed on undecoded (and still decodable in the
worker), a receiver that still stops cleanly, the peer's feedback on the bot's
video, mDNS candidates added with the address the engine resolved.
"""

import asyncio
import inspect
import queue
import threading
from importlib.metadata import version

import aioice.ice
import aioice.mdns
import aiortc
import aiortc.rtcsctptransport
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, pack_remb_fci
from aiortc.sdp import SessionDescription

from engine.aiortc_seam import (
    forward_sender_feedback,
    mdns_answered_from,
    prefer_codecs,
    tap_encoded_frames,
)
from engine.common.keyframes import is_keyframe
from engine.tracks import EncodedVideoTrack
from tests.support.peers import (
    client_pc,
    loopback_only,
    mdns_candidate,
    mdns_name,
    without_end_of_candidates,
)
from transport.media.codecs import MediaDecoder

_MISSING = object()


@pytest.fixture
def loopback():
    with loopback_only():
        yield


async def connect(sender: RTCPeerConnection, receiver: RTCPeerConnection, on_frame=None) -> None:
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    for index, transceiver in enumerate(receiver.getTransceivers() if on_frame else ()):
        tap_encoded_frames(transceiver.receiver, lambda codec, frame, index=index: on_frame(index, codec, frame))
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)


def method_taking(*parameters: str, coroutine: bool):
    def is_expected(member) -> bool:
        return (
            callable(member)
            and inspect.iscoroutinefunction(member) == coroutine
            and list(inspect.signature(member).parameters) == list(parameters)
        )

    return is_expected


def codec_list(member) -> bool:
    return isinstance(member, list) and bool(member) and all(isinstance(c, RTCRtpCodecParameters) for c in member)


async def test_every_private_member_the_seam_uses_is_there(loopback):
    sender, receiver = client_pc(), client_pc()
    sender.addTrack(VideoStreamTrack())
    await connect(sender, receiver)
    transceiver = receiver.getTransceivers()[0]
    video_sender = sender.getTransceivers()[0].sender
    expected = [
        (transceiver.receiver, "_enabled", lambda m: isinstance(m, bool), "a bool"),
        (transceiver.receiver, "_RTCRtpReceiver__jitter_buffer", lambda m: isinstance(m, JitterBuffer), "a JitterBuffer"),
        (transceiver.receiver, "_RTCRtpReceiver__decoder_queue", lambda m: isinstance(m, queue.Queue), "a queue.Queue"),
        (
            transceiver.receiver,
            "_RTCRtpReceiver__decoder_thread",
            lambda m: m is None or isinstance(m, threading.Thread),
            "None until the receiver starts, then a Thread",
        ),
        (transceiver.receiver, "_send_rtcp_pli", method_taking("media_ssrc", coroutine=True), "async _send_rtcp_pli(media_ssrc)"),
        (transceiver, "_codecs", codec_list, "the negotiated codecs, a list of RTCRtpCodecParameters"),
        (video_sender, "_send_keyframe", method_taking(coroutine=False), "a plain _send_keyframe()"),
        (
            video_sender,
            "_RTCRtpSender__encoder",
            lambda m: m is None or hasattr(m, "pack"),
            "None until the sender first sends, then an encoder with pack()",
        ),
        (JitterBuffer, "__init__", lambda m: {"capacity", "is_video"} <= set(inspect.signature(m).parameters), "JitterBuffer(capacity, is_video)"),
        (aiortc.rtcsctptransport, "USERDATA_MAX_LENGTH", lambda m: isinstance(m, int), "an int, the SCTP chunk size"),
        (
            aioice.ice,
            "get_or_create_mdns_protocol",
            method_taking("subscriber", coroutine=True),
            "async get_or_create_mdns_protocol(subscriber)",
        ),
        (aioice.ice, "unref_mdns_protocol", method_taking("subscriber", coroutine=True), "async unref_mdns_protocol(subscriber)"),
        (
            aioice.mdns.MDnsProtocol,
            "resolve",
            method_taking("self", "hostname", "timeout", coroutine=True),
            "async resolve(hostname, timeout)",
        ),
    ]
    try:
        wrong = []
        for owner, name, is_expected, kind in expected:
            member = getattr(owner, name, _MISSING)
            if member is _MISSING or not is_expected(member):
                owner_name = getattr(owner, "__name__", type(owner).__name__)
                wrong.append(f"{owner_name}.{name}: expected {kind}, found {'nothing' if member is _MISSING else repr(member)}")
        versions = f"aiortc {aiortc.__version__} / aioice {version('aioice')}"
        assert not wrong, f"{versions} changed what engine/aiortc_seam.py reaches into:\n" + "\n".join(wrong)
    finally:
        await sender.close()
        await receiver.close()


async def test_frames_arrive_encoded_and_decode(loopback):
    sender, receiver = client_pc(), client_pc()
    sender.addTrack(AudioStreamTrack())
    sender.addTrack(VideoStreamTrack())
    frames: dict[int, list] = {0: [], 1: []}
    await connect(sender, receiver, lambda index, codec, frame: frames[index].append((codec.mimeType, frame)))
    try:
        async with asyncio.timeout(10):
            while len(frames[0]) < 10 or len(frames[1]) < 5:
                await asyncio.sleep(0.05)
    finally:
        await sender.close()

    (audio_mime, _), (video_mime, first) = frames[0][0], frames[1][0]
    assert (audio_mime, video_mime) == ("audio/opus", "video/VP8")
    assert is_keyframe(video_mime, first.data)
    assert not is_keyframe(video_mime, frames[1][1][1].data)
    video, audio = MediaDecoder(), MediaDecoder()
    pictures = [f for _, frame in frames[1] for f in video.decode(video_mime, frame.data, frame.timestamp)]
    assert (pictures[0].width, pictures[0].height) == (640, 480)
    sound = audio.decode(audio_mime, frames[0][0][1].data, frames[0][0][1].timestamp)
    assert (sound[0].sample_rate, sound[0].samples) == (48000, 960)

    # Stopping the receiver still ends its track, and does not wait on a decoder.
    track = receiver.getTransceivers()[1].receiver.track
    async with asyncio.timeout(5):
        await receiver.close()
        with pytest.raises(MediaStreamError):
            while True:
                await track.recv()


async def test_a_started_receiver_cannot_be_tapped(loopback):
    """Its decoder thread already reads its own queue: a tap would leave that thread waiting forever."""
    sender, receiver = client_pc(), client_pc()
    sender.addTrack(VideoStreamTrack())
    await connect(sender, receiver)
    started = receiver.getTransceivers()[0].receiver
    try:
        async with asyncio.timeout(10):
            while started._RTCRtpReceiver__decoder_thread is None:
                await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="has started"):
            tap_encoded_frames(started, lambda *_: None)
    finally:
        await sender.close()
        await receiver.close()


async def test_a_preferred_codec_comes_first_in_the_answer_only_if_offered(loopback):
    answers = []
    for offered in (["video/VP8", "video/H264"], ["video/VP8"]):
        sender, receiver = client_pc(), client_pc()
        transceiver = sender.addTransceiver("video")
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in capabilities if c.mimeType in [*offered, "video/rtx"]])
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        prefer_codecs(receiver.getTransceivers()[0], ["video/H264"])
        await receiver.setLocalDescription(await receiver.createAnswer())
        answers.append([c.mimeType for c in SessionDescription.parse(receiver.localDescription.sdp).media[0].rtp.codecs])
        await sender.close()
        await receiver.close()

    assert answers[0][:2] == ["video/H264", "video/rtx"] and "video/VP8" in answers[0]
    assert answers[1] == ["video/VP8", "video/rtx"]


async def test_sender_feedback_reaches_the_bot_encoder():
    """PLI and REMB from the peer, parsed by a real aiortc sender, reach the callbacks."""
    pc = client_pc()
    track = EncodedVideoTrack(lambda: None)
    sender = pc.addTransceiver(track, direction="sendonly").sender
    keyframes, bitrates = [], []
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    forward_sender_feedback(sender, codec, lambda: keyframes.append(1), bitrates.append)
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc)
    await sender._handle_rtcp_packet(pli)
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(1_200_000, [sender._ssrc]))
    await sender._handle_rtcp_packet(remb)
    await sender._handle_rtcp_packet(remb)  # unchanged: not sent again
    assert keyframes == [1]
    assert bitrates == [1_200_000]
    await pc.close()


async def test_mdns_candidates_are_added_at_once_with_the_address_the_engine_resolved(loopback):
    sender, receiver = client_pc(), client_pc()
    sender.createDataChannel("chat")
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(RTCSessionDescription(without_end_of_candidates(sender.localDescription.sdp), "offer"))
    try:
        with mdns_answered_from({mdns_name(0): "127.0.0.1"}):
            adds = [asyncio.create_task(receiver.addIceCandidate(mdns_candidate(n))) for n in (0, 1)]
        await asyncio.sleep(0)
        # Both were done in their first step: neither waited for the network.
        assert all(add.done() for add in adds)
        # aioice keeps the name as the host and reaches it at the address; the unanswered name is dropped.
        connection = receiver.sctp.transport.transport._connection
        named = [(c.host, c._network_host) for c in connection.remote_candidates if c.host.endswith(".local")]
        assert named == [(mdns_name(0), "127.0.0.1")]
    finally:
        await sender.close()
        await receiver.close()
