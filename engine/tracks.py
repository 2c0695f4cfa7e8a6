"""The bot's output tracks, which aiortc pulls from in the engine.

The bot's media reaches the engine already encoded (the worker encodes it), so
the engine gives aiortc an ``EncodedAudioTrack`` and an ``EncodedVideoTrack``
of packets it only has to packetize.
"""

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import Packet

from engine.common.keyframes import KeyframeGate
from engine.common.pacing import PacedAudioTrack
from engine.common.protocol import OPUS_FRAME_MS, OPUS_SAMPLE_RATE, bitrate_changed

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
        packet.time_base = fractions.Fraction(1, OPUS_SAMPLE_RATE)
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
        # A smaller change would not make the encoder reopen, so it is not sent.
        if bitrate_changed(self._bitrate, bitrate):
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
