"""The seed's output tracks, for code that builds its own aiortc tracks.

``RawAudioTrack`` and ``RawVideoTrack`` keep the seed's names and behaviour,
with bounded buffers: audio holds at most ``max_queued_ms`` and drops the
oldest, video holds only the newest frame. The host itself does not send
through them: the worker encodes the bot's media and the engine packetizes it
(``engine.tracks``).
"""

import asyncio
import fractions

import numpy as np
from aiortc import VideoStreamTrack
from av import AudioFrame, VideoFrame
from loguru import logger

from engine.common.pacing import PacedAudioTrack


class RawAudioTrack(PacedAudioTrack):
    """Custom audio stream track for WebRTC output.

    Handles audio frame generation and timing for WebRTC transmission,
    supporting queued audio data with proper synchronization.
    """

    def __init__(
        self,
        sample_rate: int,
        auto_silence: bool = True,
        *,
        frame_ms: int = 10,
        max_queued_ms: int = 2000,
    ):
        """Initialize the raw audio track.

        Args:
            sample_rate: The audio sample rate in Hz.
            auto_silence: If True, emit silence when the queue is empty. If False,
                wait until audio data is available.
            frame_ms: Duration of each frame handed to the encoder (10 or 20 ms).
            max_queued_ms: Audio held before the oldest is dropped.
        """
        super().__init__(sample_rate, auto_silence, frame_ms, max_queued_ms)
        self._bytes_per_10ms = sample_rate // 100 * 2
        self._bytes_per_frame = self._samples_per_frame * 2

    def add_audio_bytes(self, audio_bytes: bytes) -> asyncio.Future:
        """Add audio bytes to the buffer for transmission.

        Args:
            audio_bytes: Raw audio data to queue for transmission.

        Returns:
            A Future that completes when the data is processed.

        Raises:
            ValueError: If audio bytes are not a multiple of 10ms size.
        """
        if len(audio_bytes) % self._bytes_per_10ms != 0:
            raise ValueError("Audio bytes must be a multiple of 10ms size.")
        size = self._bytes_per_frame
        chunks = [bytes(audio_bytes[start : start + size]) for start in range(0, len(audio_bytes), size)]
        if chunks and len(chunks[-1]) < size:
            chunks[-1] += bytes(size - len(chunks[-1]))
        return self._queue(chunks)

    async def recv(self) -> AudioFrame:
        """Return the next audio frame for WebRTC transmission.

        Returns:
            An AudioFrame containing the next audio data, or silence if the queue is empty
            and ``auto_silence`` is True.
        """
        chunk, pts = await self._next_frame()
        samples = np.frombuffer(chunk or bytes(self._bytes_per_frame), dtype=np.int16)
        frame = AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, self._sample_rate)
        return frame


class RawVideoTrack(VideoStreamTrack):
    """Custom video stream track for WebRTC output.

    Handles video frame queuing and conversion for WebRTC transmission. Only
    the newest frame is kept: a frame that waited behind a newer one is stale.
    """

    def __init__(self, width, height):
        """Initialize the raw video track.

        Args:
            width: Video frame width in pixels.
            height: Video frame height in pixels.
        """
        super().__init__()
        self._width = width
        self._height = height
        self._latest = None
        self._frame_ready = asyncio.Event()
        self.dropped_frames = 0

    def add_video_frame(self, frame):
        """Add a video frame to the transmission buffer.

        Args:
            frame: The video frame to queue for transmission: an object with
                ``image`` (bytes-like), ``size`` (width, height) and ``format``
                ("RGB", "RGBA" or "I420"), such as Pipecat's ``OutputImageRawFrame``.
        """
        if self._latest is not None:
            self.dropped_frames += 1
        self._latest = frame
        self._frame_ready.set()

    async def recv(self) -> VideoFrame:
        """Return the next video frame for WebRTC transmission.

        Returns:
            A VideoFrame ready for WebRTC transmission.
        """
        while self._latest is None:
            self._frame_ready.clear()
            await self._frame_ready.wait()
        raw, self._latest = self._latest, None
        frame = self._to_video_frame(raw)
        frame.pts, frame.time_base = await self.next_timestamp()
        return frame

    def _to_video_frame(self, raw) -> VideoFrame:
        # I420 is wrapped as it is, with no conversion; RGB and RGBA are what
        # the seed's callers send.
        width, height = raw.size if raw.size else (self._width, self._height)
        pixels = np.frombuffer(raw.image, dtype=np.uint8)
        fmt = (raw.format or "RGB").upper()
        if fmt == "I420":
            return VideoFrame.from_ndarray(pixels.reshape(height * 3 // 2, width), format="yuv420p")
        if fmt in ("RGB", "RGBA"):
            channels = len(fmt)
            av_format = "rgb24" if channels == 3 else "rgba"
            return VideoFrame.from_ndarray(pixels.reshape(height, width, channels), format=av_format)
        logger.warning(f"RawVideoTrack: unsupported image format {raw.format!r}, sending black")
        return VideoFrame(width=width, height=height, format="yuv420p")
