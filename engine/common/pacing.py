"""Audio handed to an aiortc sender one frame at a time, at wall-clock pace, from a bounded queue.

The engine sends the bot's Opus packets this way (``engine.tracks``), and the
seed's ``RawAudioTrack`` (``transport.tracks``) sends PCM the same way.
"""

import asyncio
import time
from collections import deque

from aiortc.mediastreams import AudioStreamTrack


class PacedAudioTrack(AudioStreamTrack):
    """Hands aiortc one frame of audio at a time, at wall-clock pace, from a bounded queue.

    The queue holds at most ``max_queued_ms`` and drops the oldest. Each write
    returns a future that completes (True) when its last frame is taken, or
    (False) when it is dropped or cleared.
    """

    def __init__(self, sample_rate: int, auto_silence: bool, frame_ms: int, max_queued_ms: int):
        super().__init__()
        self._sample_rate = sample_rate
        self._auto_silence = auto_silence
        self._samples_per_frame = sample_rate * frame_ms // 1000
        self._timestamp = 0
        self._start = 0.0
        # (frame, future or None): the future rides on the last frame of its write.
        self._frames: deque[tuple[bytes, asyncio.Future | None]] = deque()
        self._max_frames = max(1, max_queued_ms // frame_ms)
        self._frame_ready = asyncio.Event()
        self.dropped_frames = 0

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the sender."""
        return len(self._frames)

    def _queue(self, frames: list[bytes]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        for index, frame in enumerate(frames):
            if len(self._frames) >= self._max_frames:
                self._drop_oldest()
            self._frames.append((frame, future if index == len(frames) - 1 else None))
        if not frames:
            future.set_result(True)
        self._frame_ready.set()
        return future

    def _drop_oldest(self):
        _, future = self._frames.popleft()
        self.dropped_frames += 1
        if future and not future.done():
            future.set_result(False)

    def clear(self):
        """Drop every queued frame (an interruption), completing their futures."""
        while self._frames:
            _, future = self._frames.popleft()
            if future and not future.done():
                future.set_result(False)

    async def _next_frame(self) -> tuple[bytes | None, int]:
        """The next queued frame (None: silence is due) and its pts, once it is time to send it."""
        if self._timestamp == 0:
            self._start = time.monotonic()
        else:
            wait = self._start + self._timestamp / self._sample_rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

        if not self._frames and not self._auto_silence:
            while not self._frames:
                self._frame_ready.clear()
                await self._frame_ready.wait()
            # A track that waited restarts its clock rather than bursting to catch up.
            self._start = time.monotonic() - self._timestamp / self._sample_rate

        frame = None
        if self._frames:
            frame, future = self._frames.popleft()
            if future and not future.done():
                future.set_result(True)
        pts = self._timestamp
        self._timestamp += self._samples_per_frame
        return frame, pts
