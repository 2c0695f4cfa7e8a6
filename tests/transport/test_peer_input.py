"""The peer's sources in the worker: encoded frames from the engine are decoded, bounded, and a lost one costs a keyframe."""

import asyncio

import zmq

from engine.common.protocol import AudioIn, MediaSource, VideoInBacklog
from tests.support.media import BARS, encoded_audio, encoded_video, tone
from transport.peer_input import InputTrack


async def test_video_is_decoded_and_the_newest_picture_kept():
    track = InputTrack(MediaSource.CAMERA, lambda: None)
    for message, payload in encoded_video(3, {1}):
        track.deliver(message, payload)
        await asyncio.sleep(0.05)  # let the decoder take each one
    frame = await asyncio.wait_for(track.recv(), 2)
    assert (frame.width, frame.height, frame.pts) == (BARS.shape[1], BARS.shape[0], 9000)
    track.close()


async def test_a_lost_frame_asks_for_a_keyframe_and_drops_to_it():
    requests = []
    track = InputTrack(MediaSource.CAMERA, lambda: requests.append(1))
    frames = encoded_video(6, {1, 5})
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


async def test_a_backlog_decodes_to_its_newest_picture_and_the_live_frames_continue_it():
    requests = []
    track = InputTrack(MediaSource.CAMERA, lambda: requests.append(1))
    frames = encoded_video(8, {1})
    kept, live = frames[:5], frames[5:]
    backlog = VideoInBacklog(kept[0][0].session_id, MediaSource.CAMERA, "video/VP8", 1, tuple(m.pts for m, _ in kept))
    track.deliver(backlog, [payload for _, [payload] in kept])
    frame = await asyncio.wait_for(track.recv(), 2)
    assert frame.pts == 5 * 3000  # the newest of the backlog, the others decoded on the way to it
    for message, payload in live:
        track.deliver(message, payload)
        await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(track.recv(), 2)).pts == 8 * 3000
    assert requests == []  # numbered on from the backlog: no gap, no keyframe asked for
    track.close()


async def test_audio_is_decoded_on_arrival_and_bounded():
    track = InputTrack(MediaSource.MICROPHONE, lambda: None)
    for message, payload in encoded_audio(bytes(1920 * 30)):
        track.deliver(message, payload)
    frame = await track.recv()
    assert (frame.sample_rate, frame.samples) == (48000, 960)
    assert track.dropped == 5  # 25 frames are kept


async def test_a_frame_that_does_not_decode_is_dropped():
    track = InputTrack(MediaSource.MICROPHONE, lambda: None)
    track.deliver(AudioIn("pc", "audio/unknown", 0), [zmq.Frame(b"\x00")])
    assert track._decoded.get_nowait() is None


async def test_old_frames_are_discarded_and_the_next_is_new():
    track = InputTrack(MediaSource.MICROPHONE, lambda: None)
    frames = encoded_audio(tone(440, 48000, 1, 0.1))
    for message, payload in frames[:3]:
        track.deliver(message, payload)
    await track.discard_old_frames()
    track.deliver(*frames[3])
    assert (await track.recv()).pts == frames[3][0].pts


def test_the_peer_turning_a_source_off_shows():
    track = InputTrack(MediaSource.CAMERA, lambda: None)
    assert track.is_enabled()
    track.set_enabled(False)
    assert not track.is_enabled()
