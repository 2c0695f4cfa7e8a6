"""The bot's output tracks, which aiortc pulls from in the engine.

The bot's media reaches the engine already encoded (the worker encodes it), so
the engine gives aiortc an ``EncodedAudioTrack`` and an ``EncodedVideoTrack``
of packets it only has to packetize. They use aiortc's public API only; the
peer's feedback on the video, which aiortc keeps to its sender, reaches the
bot through ``engine.aiortc_seam``.
"""

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError
from av import Packet

from engine.common.keyframes import KeyframeGate
from engine.common.pacing import PacedAudioTrack
from engine.common.protocol import OPUS_FRAME_MS, OPUS_SAMPLE_RATE

# The Opus packets' clock, made once: a Fraction per 20 ms packet per session showed in the engine's profile.
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_SAMPLE_RATE)
# 20 ms of silence as one Opus packet (TOC 0xf8: CELT fullband, 20 ms, mono;
# then an empty frame), what WebRTC stacks send when there is nothing to say.
OPUS_SILENCE = b"\xf8\xff\xfe"


class EncodedAudioTrack(PacedAudioTrack):
    """The bot's audio as 20 ms Opus packets (the worker encodes it), sent at wall-clock pace.

    When the queue is empty it sends silence packets, or waits if
    ``auto_silence`` is False.
    """

    def __init__(self, auto_silence: bool = True, max_queued_ms: int = 2000):
        """Initialize the track.

        Args:
            auto_silence: Whether to send silence while there is no bot audio.
            max_queued_ms: Audio held before the oldest is dropped.
        """
        super().__init__(OPUS_SAMPLE_RATE, auto_silence, OPUS_FRAME_MS, max_queued_ms)

    def add_packet(self, packet: bytes) -> asyncio.Future:
        """Queue one 20 ms Opus packet; the future completes when the sender takes it."""
        return self._queue([packet])

    async def recv(self) -> Packet:
        """Return the next Opus packet (silence if there is none and ``auto_silence`` is set)."""
        data, pts = await self._next_frame()
        packet = Packet(data or OPUS_SILENCE)
        packet.pts = pts
        packet.time_base = OPUS_TIME_BASE
        return packet


class EncodedVideoTrack(MediaStreamTrack):
    """The bot's video as encoded frames, for an aiortc sender to packetize.

    Frames pass a ``KeyframeGate``: after a gap in their numbering, and at the
    start, they are dropped up to the next keyframe and one is asked for. At
    most ``max_queued`` frames wait for the sender; past that the queue is
    dropped (the sender has fallen behind) and the same recovery applies.
    """

    kind = "video"

    def __init__(self, request_keyframe: Callable[[], None], max_queued: int = 4):
        """Initialize the track.

        Args:
            request_keyframe: Asks the encoder for a keyframe.
            max_queued: Frames held for the sender before the queue is dropped.
        """
        super().__init__()
        self._gate = KeyframeGate(request_keyframe)
        self._max_queued = max_queued
        self._frames: deque[bytes] = deque()
        self._frame_ready = asyncio.Event()
        self._start: float | None = None
        self._overflow_drops = 0

    @property
    def dropped_frames(self) -> int:
        """Frames dropped: the sender fell behind, or they waited for a keyframe."""
        return self._overflow_drops + self._gate.dropped_frames

    def add_encoded_frame(self, data: bytes, index: int, keyframe: bool) -> bool:
        """Queue an encoded frame.

        Args:
            data: The frame's bitstream.
            index: Its place in the encoder's sequence.
            keyframe: Whether it decodes on its own.

        Returns:
            Whether the frame was queued (False: dropped until a keyframe).
        """
        if len(self._frames) >= self._max_queued:
            self._overflow_drops += len(self._frames)
            self._frames.clear()
            self._gate.break_stream()
        if not self._gate.admit(index, keyframe):
            return False
        self._frames.append(data)
        self._frame_ready.set()
        return True

    def stop(self) -> None:
        """End the track, waking a sender waiting for a frame."""
        super().stop()
        self._frame_ready.set()

    async def recv(self) -> Packet:
        """Return the next encoded frame, stamped with the time the sender took it.

        Raises:
            MediaStreamError: If the track has ended.
        """
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._frame_ready.clear()
            await self._frame_ready.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        packet = Packet(self._frames.popleft())
        packet.pts = int((now - self._start) / VIDEO_TIME_BASE)
        packet.time_base = VIDEO_TIME_BASE
        return packet
