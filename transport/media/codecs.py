"""The worker's codecs: it decodes the peer's encoded frames and encodes the bot's media, so the engine only packetizes.

Decoding uses aiortc's own decoders (``MediaDecoder``); encoding configures
libvpx, libx264 (``VideoEncoder``) and libopus (``OpusEncoder``) as aiortc's
encoders do, so a peer sees the stream Pipecat's transport would send.
"""

from __future__ import annotations

import fractions
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc.codecs import get_decoder, h264, vpx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from engine.common.protocol import (
    OPUS_FRAME_MS,
    OPUS_SAMPLE_RATE,
    VideoEncoderSettings,
    bitrate_changed,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer


class MediaDecoder:
    """Decodes one of the peer's sources with aiortc's decoder for its negotiated codec.

    The decoder is replaced when the codec changes (a renegotiation), as aiortc's
    receiver does. One thread at a time per decoder.
    """

    def __init__(self):
        """Initialize the decoder (it opens on the first frame)."""
        self._mime_type: str | None = None
        self._decoder = None

    def decode(self, mime_type: str, data: bytes, pts: int) -> list[av.AudioFrame] | list[av.VideoFrame]:
        """Decode one encoded frame.

        Args:
            mime_type: The codec, e.g. ``"audio/opus"`` or ``"video/VP8"``.
            data: The frame as the receiver reassembled it.
            pts: Its RTP timestamp (the frames' ``pts``, in the codec's clock).

        Returns:
            The decoded frames (possibly none).

        Raises:
            ValueError: If there is no decoder for ``mime_type``.
            av.FFmpegError: If the frame does not decode.
        """
        if mime_type != self._mime_type:
            self._decoder = get_decoder(RTCRtpCodecParameters(mimeType=mime_type, clockRate=0))
            self._mime_type = mime_type
        return self._decoder.decode(JitterFrame(data, pts))


VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
DEFAULT_VIDEO_ENCODER = VideoEncoderSettings()

# How aiortc's own encoders configure libvpx and libx264 for real-time WebRTC
# (and the bitrate bounds of each), so a peer sees the same stream it would
# from Pipecat's transport; VideoEncoderSettings sets the speed, the denoiser,
# the preset and the bounds (its defaults are aiortc's).
_VIDEO_CODECS = {
    "video/VP8": (
        "libvpx",
        vpx,
        {
            "deadline": "realtime",
            "lag-in-frames": "0",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        },
    ),
    "video/H264": ("libx264", h264, {"level": "31", "tune": "zerolatency"}),
}
VIDEO_MIME_TYPES = tuple(_VIDEO_CODECS)


class VideoEncoder:
    """Encodes a bot's video for one peer, in the peer's negotiated codec.

    The codec is reopened when the frame size or the target bitrate changes
    (``bitrate_changed``, as aiortc does); its first frame is then a keyframe.
    One thread at a time per encoder: the workers are the parallelism.
    """

    def __init__(self, mime_type: str, settings: VideoEncoderSettings = DEFAULT_VIDEO_ENCODER):
        """Initialize the encoder.

        Args:
            mime_type: The negotiated codec, ``"video/VP8"`` or ``"video/H264"``.
            settings: The engine's choices (speed, denoiser, preset, bitrate bounds).

        Raises:
            ValueError: If the codec is not one the worker encodes.
        """
        if mime_type not in _VIDEO_CODECS:
            raise ValueError(f"no encoder for {mime_type!r} (have {', '.join(VIDEO_MIME_TYPES)})")
        self.mime_type = mime_type
        self.settings = settings
        self._name, limits, options = _VIDEO_CODECS[mime_type]
        if self._name == "libvpx":
            speed = {"cpu-used": str(settings.vp8_cpu_used), "noise-sensitivity": str(settings.vp8_noise_sensitivity)}
            options = {**options, **speed}
        elif settings.h264_preset:
            options = {**options, "preset": settings.h264_preset}
        self.options: dict[str, str] = options
        """The codec's libav options (without the rate control's, which follow the bitrate)."""
        self._max_bitrate = settings.max_bitrate or limits.MAX_BITRATE
        # A maximum below the codec's own minimum wins over it.
        self._min_bitrate = min(settings.min_bitrate or limits.MIN_BITRATE, self._max_bitrate)
        self._codec: av.VideoCodecContext | None = None
        self._bitrate = 0
        self.bitrate = settings.start_bitrate or limits.DEFAULT_BITRATE

    @property
    def bitrate(self) -> int:
        """Target bitrate in bits per second, kept within the bounds."""
        return self._bitrate

    @bitrate.setter
    def bitrate(self, bitrate: int) -> None:
        self._bitrate = max(self._min_bitrate, min(bitrate, self._max_bitrate))

    def encode(self, i420: np.ndarray, pts: int, keyframe: bool = False) -> tuple[bytes, bool]:
        """Encode one I420 frame.

        Args:
            i420: A (height * 3 // 2, width) uint8 array, as ``rgb_to_i420`` returns.
            pts: Capture time in ``VIDEO_TIME_BASE`` units (drives rate control).
            keyframe: Whether the frame must be a keyframe.

        Returns:
            The frame's bitstream (possibly empty) and whether it is a keyframe.
        """
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        codec = self._codec
        if codec is not None and (
            (frame.width, frame.height) != (codec.width, codec.height)
            or bitrate_changed(codec.bit_rate, self._bitrate)
        ):
            codec = None
        if codec is None:
            codec = self._codec = self._open(frame.width, frame.height)
        # NONE lets libx264 choose; I forces a complete picture.
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        packets = codec.encode(frame)
        return b"".join(bytes(packet) for packet in packets), any(packet.is_keyframe for packet in packets)

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        codec = av.CodecContext.create(self._name, "w")
        codec.width = width
        codec.height = height
        codec.pix_fmt = "yuv420p"
        codec.bit_rate = self._bitrate
        codec.time_base = VIDEO_TIME_BASE
        codec.thread_count = 1
        if self._name == "libvpx":
            codec.gop_size = 3000  # keyframes only when asked for
            codec.qmin = 2
            codec.qmax = 56
            # minrate = maxrate = bit_rate is constant bitrate; a one-second buffer.
            rate = str(self._bitrate)
            codec.options = {**self.options, "bufsize": rate, "minrate": rate, "maxrate": rate}
        else:
            codec.framerate = fractions.Fraction(h264.MAX_FRAME_RATE, 1)
            codec.profile = "Baseline"
            codec.options = self.options
        return codec


# The rates libopus takes its input at. A bot's audio at one of them is encoded as it is,
# without resampling it to 48 kHz first (which cost more than the encode itself); the
# packets decode at whatever rate the peer's decoder runs, as any Opus packet does.
OPUS_INPUT_RATES = (8000, 12000, 16000, 24000, 48000)


class OpusEncoder:
    """Encodes a bot's mono audio as Opus, one packet per 20 ms frame, as aiortc configures it."""

    def __init__(self, sample_rate: int = OPUS_SAMPLE_RATE):
        """Initialize the encoder.

        Args:
            sample_rate: The rate of the PCM it takes, one of ``OPUS_INPUT_RATES``.

        Raises:
            ValueError: If libopus does not take that rate.
        """
        if sample_rate not in OPUS_INPUT_RATES:
            raise ValueError(f"libopus takes {OPUS_INPUT_RATES} Hz, not {sample_rate}")
        self.sample_rate = sample_rate
        self._samples = sample_rate * OPUS_FRAME_MS // 1000
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.bit_rate = 96000
        self._codec.format = "s16"
        self._codec.layout = "mono"
        self._codec.sample_rate = sample_rate
        self._codec.time_base = fractions.Fraction(1, sample_rate)
        self._codec.options = {"application": "voip"}
        self._pts = 0

    def encode(self, pcm: Buffer) -> bytes:
        """Encode 20 ms of packed s16 mono PCM at the encoder's rate into one Opus packet.

        Raises:
            ValueError: If ``pcm`` is not exactly 20 ms.
        """
        samples = np.frombuffer(pcm, np.int16)
        if samples.size != self._samples:
            raise ValueError(f"Opus frames are {OPUS_FRAME_MS} ms at {self.sample_rate} Hz, got {samples.size} samples")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))
