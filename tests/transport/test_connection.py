"""The worker's input tracks: encoded frames from the engine are decoded, and a lost one costs a keyframe."""

import asyncio

import zmq

from engine.common.protocol import AudioIn, MediaSource, VideoIn
from tests.support.client import colour_bars
from transport.connection import InputTrack
from transport.media import OpusEncoder, VideoEncoder, rgb_to_i420

ENCODED_BARS = colour_bars(320, 240)


def camera_frames(count: int, keyframes: set[int]) -> list[tuple[VideoIn, list]]:
    encoder = VideoEncoder("video/VP8")
    i420 = rgb_to_i420(ENCODED_BARS, ENCODED_BARS.shape[1], ENCODED_BARS.shape[0])
    frames = []
    for index in range(1, count + 1):
        data, _ = encoder.encode(i420, index * 3000, keyframe=index in keyframes)
        frames.append((VideoIn("pc", "camera", "video/VP8", index, index * 3000), [zmq.Frame(data)]))
    return frames


async def test_video_is_decoded_and_the_newest_picture_kept():
    track = InputTrack(MediaSource.CAMERA, lambda: None)
    for message, payload in camera_frames(3, {1}):
        track.deliver(message, payload)
        await asyncio.sleep(0.05)  # let the decoder take each one
    frame = await asyncio.wait_for(track.recv(), 2)
    assert (frame.width, frame.height, frame.pts) == (ENCODED_BARS.shape[1], ENCODED_BARS.shape[0], 9000)
    track.close()


async def test_a_lost_frame_asks_for_a_keyframe_and_drops_to_it():
    requests = []
    track = InputTrack(MediaSource.CAMERA, lambda: requests.append(1))
    frames = camera_frames(6, {1, 5})
    del frames[2]  # frame 3 never arrives
    for message, payload in frames:
        track.deliver(message, payload)
        await asyncio.sleep(0.05)
    decoded = []
    while (frame := track._decoded.get_nowait()) is not None:
        decoded.append(frame.pts)
    # Frame 6 is newest; 4 was dropped (it depends on the lost 3) and a keyframe was asked for.
    assert decoded == [6 * 3000]
    assert requests == [1] and track.dropped >= 1
    track.close()


async def test_audio_is_decoded_on_arrival_and_bounded():
    track = InputTrack(MediaSource.MICROPHONE, lambda: None)
    encoder = OpusEncoder()
    for index in range(30):
        track.deliver(AudioIn("pc", "audio/opus", index * 960), [zmq.Frame(encoder.encode(bytes(1920)))])
    frame = await track.recv()
    assert (frame.sample_rate, frame.samples) == (48000, 960)
    assert track.dropped == 5  # 25 frames are kept


async def test_a_frame_that_does_not_decode_is_dropped():
    track = InputTrack(MediaSource.MICROPHONE, lambda: None)
    track.deliver(AudioIn("pc", "audio/unknown", 0), [zmq.Frame(b"\x00")])
    assert track._decoded.get_nowait() is None
