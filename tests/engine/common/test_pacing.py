"""Paced audio: write futures, the bounded queue, wall-clock pace, and waiting for audio without auto-silence.

``PacedAudioTrack`` is driven through the two calls its subclasses make
(``engine.tracks``, ``transport.tracks``): ``_queue`` a write of frames, and
``_next_frame`` when the sender wants one.
"""

import asyncio
import time

from engine.common.pacing import PacedAudioTrack

RATE = 48000
FRAME_MS = 20
SAMPLES = RATE * FRAME_MS // 1000
# How early a frame may come by the clocks' rounding; no assertion says how late.
EPSILON_S = 0.001


def track(auto_silence: bool = True, max_queued_ms: int = 2000) -> PacedAudioTrack:
    return PacedAudioTrack(RATE, auto_silence, FRAME_MS, max_queued_ms)


async def test_a_write_completes_true_when_its_last_frame_is_taken():
    paced = track()
    written = paced._queue([b"a", b"b", b"c"])
    assert await paced._next_frame() == (b"a", 0)
    assert await paced._next_frame() == (b"b", SAMPLES)
    assert not written.done()
    assert await paced._next_frame() == (b"c", 2 * SAMPLES)
    assert written.result() is True


async def test_an_empty_write_is_complete_at_once():
    assert track()._queue([]).result() is True


async def test_the_queue_is_bounded_and_drops_the_oldest_write_first():
    paced = track(max_queued_ms=100)  # five 20 ms frames
    first = paced._queue([b"1a", b"1b", b"1c"])
    second = paced._queue([b"2a", b"2b", b"2c", b"2d", b"2e"])
    assert paced.dropped_frames == 3
    assert first.result() is False
    assert not second.done()
    taken = [(await paced._next_frame())[0] for _ in range(5)]
    assert taken == [b"2a", b"2b", b"2c", b"2d", b"2e"]
    assert second.result() is True


async def test_a_write_whose_last_frame_survives_still_completes_true():
    paced = track(max_queued_ms=100)
    first = paced._queue([b"1a", b"1b", b"1c", b"1d"])
    second = paced._queue([b"2a", b"2b"])  # drops 1a: the first write's last frame is still queued
    assert (paced.dropped_frames, first.done()) == (1, False)
    assert [(await paced._next_frame())[0] for _ in range(3)] == [b"1b", b"1c", b"1d"]
    assert first.result() is True
    assert not second.done()


async def test_clear_drops_every_queued_frame_and_completes_false():
    paced = track()
    first = paced._queue([b"a", b"b"])
    second = paced._queue([b"c"])
    paced.clear()
    assert (first.result(), second.result()) == (False, False)
    # With auto-silence, an empty queue gives silence (None) on time.
    assert await paced._next_frame() == (None, 0)


async def test_frames_come_at_wall_clock_pace_never_before_their_time():
    paced = track()
    paced._queue([bytes([index]) for index in range(6)])
    start = time.monotonic()
    taken = []
    for _ in range(8):
        frame, pts = await paced._next_frame()
        taken.append((frame, pts, time.monotonic()))
    assert [pts for _, pts, _ in taken] == [index * SAMPLES for index in range(8)]
    # Past the queued audio comes silence, still paced.
    assert [frame for frame, _, _ in taken] == [bytes([index]) for index in range(6)] + [None, None]
    for index, (_, _, at) in enumerate(taken):
        assert at >= start + index * FRAME_MS / 1000 - EPSILON_S


async def test_without_auto_silence_it_waits_for_audio_then_restarts_its_clock():
    paced = track(auto_silence=False)
    paced._queue([b"a"])
    assert await paced._next_frame() == (b"a", 0)

    waiting = asyncio.create_task(paced._next_frame())
    await asyncio.sleep(0.1)
    assert not waiting.done()  # no silence: it waits for audio
    written_at = time.monotonic()
    written = paced._queue([b"b", b"c"])
    # The timestamp goes on from where it stopped: no gap for the time it waited.
    assert await asyncio.wait_for(waiting, 5) == (b"b", SAMPLES)
    # And the next frame is paced from the restart instead of bursting out to catch up.
    assert await asyncio.wait_for(paced._next_frame(), 5) == (b"c", 2 * SAMPLES)
    assert time.monotonic() >= written_at + FRAME_MS / 1000 - EPSILON_S
    assert written.result() is True


async def test_without_auto_silence_the_first_frame_waits_for_audio_too():
    paced = track(auto_silence=False)
    waiting = asyncio.create_task(paced._next_frame())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    paced._queue([b"a"])
    assert await asyncio.wait_for(waiting, 5) == (b"a", 0)
