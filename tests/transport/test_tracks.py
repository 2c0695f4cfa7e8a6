"""The seed's output tracks: 10 ms multiples, completion futures, pacing, bounds, the newest video frame."""

import asyncio
import time

import numpy as np
import pytest

from transport.media.colour import rgb_to_i420
from transport.tracks import RawAudioTrack, RawVideoTrack


class Image:
    def __init__(self, image, size, format):
        self.image, self.size, self.format = image, size, format


async def test_audio_rejects_partial_10ms():
    track = RawAudioTrack(16000)
    with pytest.raises(ValueError, match="10ms"):
        track.add_audio_bytes(b"\x00" * 100)


async def test_audio_future_completes_when_the_last_chunk_is_taken():
    track = RawAudioTrack(16000)
    pcm = np.arange(160 * 3, dtype=np.int16).tobytes()  # 30 ms at 16 kHz
    done = track.add_audio_bytes(pcm)
    frames = [await track.recv() for _ in range(5)]
    assert done.done() and done.result() is True
    assert [f.samples for f in frames] == [160] * 5
    assert bytes(frames[0].planes[0])[:320] == pcm[:320]
    # Past the queued audio comes silence.
    assert not frames[-1].to_ndarray().any()


async def test_audio_20ms_frames_and_pacing():
    track = RawAudioTrack(48000, frame_ms=20)
    track.add_audio_bytes(b"\x01\x00" * 960 * 10)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    assert all(f.samples == 960 for f in frames)
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    # Ten 20 ms frames take about 180 ms of wall clock (the first is immediate).
    assert time.monotonic() - start > 0.15


async def test_audio_without_auto_silence_waits():
    track = RawAudioTrack(16000, auto_silence=False)
    pending = asyncio.create_task(track.recv())
    await asyncio.sleep(0.05)
    assert not pending.done()
    track.add_audio_bytes(b"\x00" * 320)
    assert (await asyncio.wait_for(pending, 1)).samples == 160


async def test_audio_queue_is_bounded_and_drops_the_oldest():
    track = RawAudioTrack(16000, max_queued_ms=100)
    first = track.add_audio_bytes(b"\x00" * 320 * 5)
    second = track.add_audio_bytes(b"\x00" * 320 * 10)
    assert track.dropped_frames == 5
    assert first.done() and first.result() is False
    assert not second.done()


async def test_video_keeps_the_newest_frame_and_wraps_i420():
    track = RawVideoTrack(64, 48)
    red = np.zeros((48, 64, 3), dtype=np.uint8)
    red[..., 0] = 255
    track.add_video_frame(Image(np.zeros((48, 64, 3), np.uint8).tobytes(), (64, 48), "RGB"))
    track.add_video_frame(Image(rgb_to_i420(red, 64, 48).tobytes(), (64, 48), "I420"))
    assert track.dropped_frames == 1
    frame = await track.recv()
    assert (frame.width, frame.height, frame.format.name) == (64, 48, "yuv420p")
    assert abs(int(frame.to_ndarray(format="rgb24")[24, 32, 0]) - 255) < 8
