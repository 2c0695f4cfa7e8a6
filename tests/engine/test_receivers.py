"""A tapped aiortc receiver hands on complete encoded frames, which decode in the worker, and still stops cleanly."""

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

from engine.ice import restrict_host_addresses
from engine.receivers import tap_encoded_frames
from transport.media import MediaDecoder, is_keyframe


@pytest.fixture
def loopback_only():
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


async def connect(sender: RTCPeerConnection, receiver: RTCPeerConnection, on_frame) -> None:
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    for index, transceiver in enumerate(receiver.getTransceivers() if on_frame else ()):
        tap_encoded_frames(transceiver.receiver, lambda codec, frame, index=index: on_frame(index, codec, frame))
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)


async def test_frames_arrive_encoded_and_decode(loopback_only):
    sender, receiver = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
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


async def test_a_started_receiver_cannot_be_tapped(loopback_only):
    """Its decoder thread already reads its own queue: a tap would leave that thread waiting forever."""
    sender, receiver = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    sender.addTrack(VideoStreamTrack())
    await connect(sender, receiver, None)
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
