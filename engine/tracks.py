"""The bot's output tracks, which aiortc pulls from in the engine.

``RawAudioTrack`` and ``RawVideoTrack`` keep the seed's names and behaviour but
their buffers are bounded: audio holds at most ``max_queued_ms`` and drops the
oldest, video holds only the newest frame. The bot's media reaches the engine
already encoded (the worker encodes it), so the engine gives aiortc an
``EncodedAudioTrack`` and an ``EncodedVideoTrack`` of packets it only has to
packetize.
"""

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from aiortc import MediaStreamTrack, RTCRtpSender, VideoStreamTrack
from aiortc.codecs import get_encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, AudioStreamTrack, MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, Packet, VideoFrame
from loguru import logger

from engine.keyframes import KeyframeGate


class _PacedAudioTrack(AudioStreamTrack):
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


class RawAudioTrack(_PacedAudioTrack):
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


# 20 ms of silence as one Opus packet (TOC 0xf8: CELT fullband, 20 ms, mono;
# then an empty frame), what WebRTC stacks send when there is nothing to say.
OPUS_SILENCE = b"\xf8\xff\xfe"
OPUS_SAMPLE_RATE = 48000
OPUS_FRAME_MS = 20


class EncodedAudioTrack(_PacedAudioTrack):
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
        packet.time_base = fractions.Fraction(1, OPUS_SAMPLE_RATE)
        return packet


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
        # The worker sends I420 so the engine only wraps planes; RGB stays
        # accepted for the seed's callers.
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


class _FeedbackEncoder:
    """Stands in a sender's encoder so the peer's feedback reaches the bot's encoder in the worker.

    aiortc's sender packs pre-encoded packets with its codec's ``pack`` and
    writes the peer's bandwidth estimate (REMB) to ``target_bitrate``; both go
    through this object.
    """

    def __init__(self, codec: RTCRtpCodecParameters, on_bitrate: Callable[[int], None]):
        self._packer = get_encoder(codec)
        self.pack = self._packer.pack
        self._on_bitrate = on_bitrate
        self._bitrate = 0

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        # A change under 10% would not make the encoder reopen, so it is not sent.
        if abs(bitrate - self._bitrate) > self._bitrate / 10:
            self._bitrate = bitrate
            self._on_bitrate(bitrate)


def forward_sender_feedback(
    sender: RTCRtpSender,
    codec: RTCRtpCodecParameters,
    on_keyframe_request: Callable[[], None],
    on_bitrate: Callable[[int], None],
) -> None:
    """Route a video sender's keyframe requests (PLI, FIR) and bitrate estimates (REMB) to callbacks.

    aiortc acts on them only when it encodes; with pre-encoded packets the
    encoder is elsewhere and must hear of them. This reaches into the sender's
    private state, which the tests pin to the aiortc version in use.
    """
    force_keyframe = sender._send_keyframe

    def on_rtcp_keyframe_request() -> None:
        force_keyframe()
        on_keyframe_request()

    sender._send_keyframe = on_rtcp_keyframe_request
    sender._RTCRtpSender__encoder = _FeedbackEncoder(codec, on_bitrate)
