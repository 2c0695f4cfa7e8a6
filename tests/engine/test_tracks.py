"""The output tracks aiortc pulls from: 10 ms multiples, completion futures, pacing, bounds, keyframe recovery."""

import asyncio
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError

from engine.tracks import OPUS_SILENCE, EncodedAudioTrack, EncodedVideoTrack


async def test_encoded_video_starts_at_a_keyframe_and_asks_for_one():
    requests = []
    track = EncodedVideoTrack(lambda: requests.append(1))
    assert not track.add_encoded_frame(b"delta", 1, False)
    assert requests == [1]
    assert track.add_encoded_frame(b"key", 2, True)
    assert track.add_encoded_frame(b"delta", 3, False)
    first, second = await track.recv(), await track.recv()
    assert (bytes(first), bytes(second)) == (b"key", b"delta")
    assert first.time_base == VIDEO_TIME_BASE and second.pts >= first.pts


async def test_encoded_video_drops_to_the_next_keyframe_after_a_gap():
    requests = []
    track = EncodedVideoTrack(lambda: requests.append(1))
    track.add_encoded_frame(b"key", 1, True)
    assert not track.add_encoded_frame(b"after a gap", 3, False)
    assert not track.add_encoded_frame(b"still broken", 4, False)
    # Asked once, not once per dropped frame.
    assert requests == [1] and track.dropped_frames == 2
    assert track.add_encoded_frame(b"key", 5, True)
    assert [bytes(await track.recv()) for _ in range(2)] == [b"key", b"key"]


async def test_encoded_video_drops_its_queue_when_the_sender_falls_behind():
    requests = []
    track = EncodedVideoTrack(lambda: requests.append(1), max_queued=2)
    track.add_encoded_frame(b"key", 1, True)
    track.add_encoded_frame(b"d2", 2, False)
    assert not track.add_encoded_frame(b"d3", 3, False)
    assert track.dropped_frames == 3 and requests == [1]
    track.add_encoded_frame(b"key", 4, True)
    assert bytes(await track.recv()) == b"key"


async def test_encoded_video_recv_ends_with_the_track():
    track = EncodedVideoTrack(lambda: None)
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiting


async def test_encoded_audio_paces_packets_and_fills_gaps_with_silence():
    track = EncodedAudioTrack()
    done = track.add_packet(b"opus")
    started = time.monotonic()
    packets = [await track.recv() for _ in range(4)]
    assert done.result() is True
    assert [bytes(p) for p in packets] == [b"opus", OPUS_SILENCE, OPUS_SILENCE, OPUS_SILENCE]
    assert [p.pts for p in packets] == [0, 960, 1920, 2880]
    assert time.monotonic() - started >= 0.05  # three 20 ms steps after the first


def test_opus_silence_decodes_to_20ms_of_zeros():
    frames = av.CodecContext.create("opus", "r").decode(av.Packet(OPUS_SILENCE))
    assert frames[0].samples == 960 and not np.abs(frames[0].to_ndarray()).any()


async def test_encoded_audio_clear_completes_waiting_writes():
    track = EncodedAudioTrack(auto_silence=False)
    first, second = track.add_packet(b"a"), track.add_packet(b"b")
    track.clear()
    assert first.result() is False and second.result() is False
