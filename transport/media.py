"""Media work between the engine's wire format and a Pipecat bot: codecs and conversions.

The engine ships the peer's media as the encoded frames its receivers
reassemble; the worker decodes them (``MediaDecoder``, aiortc's own decoders)
into PyAV frames (padded video planes, packed s16 audio at the codec's rate and
layout). The bot wants packed RGB images and audio in exact chunks at its own
rate and channel count; on the way back it produces RGB(A) images and PCM,
which the worker encodes for the peer's codecs so the engine only packetizes
them.
"""

from __future__ import annotations

import fractions
from collections.abc import Sequence
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np
from aiortc.codecs import get_decoder, h264, vpx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from engine.common.protocol import OPUS_FRAME_MS, OPUS_SAMPLE_RATE, bitrate_changed

# One conversion at a time per worker: the workers are the parallelism, and
# OpenCV's own thread pool only spins against them (measured: a third of a
# worker's CPU at two sessions).
cv2.setNumThreads(1)

if TYPE_CHECKING:
    from typing_extensions import Buffer

FORMAT_CONVERSIONS: dict[str, int] = {
    "gray": cv2.COLOR_GRAY2RGB,
    "nv12": cv2.COLOR_YUV2RGB_NV12,
    "yuv420p": cv2.COLOR_YUV2RGB_I420,
    # OpenCV has no full-range variant; planes_to_rgb squeezes the planes into
    # video range first so the same conversion gives the right colours.
    "yuvj420p": cv2.COLOR_YUV2RGB_I420,
}

# OpenCV's 4:2:0 conversions assume video range (luma 16-235, chroma 16-240).
_FULL_TO_VIDEO_LUMA = np.round(16 + np.arange(256) * 219 / 255).astype(np.uint8)
_FULL_TO_VIDEO_CHROMA = np.round(128 + (np.arange(256) - 128) * 224 / 255).astype(np.uint8)

_RGB_TO_I420 = {
    "RGB": (3, cv2.COLOR_RGB2YUV_I420),
    "RGBA": (4, cv2.COLOR_RGBA2YUV_I420),
}


def _plane(
    fmt: str,
    planes: Sequence[Buffer],
    line_sizes: Sequence[int],
    index: int,
    rows: int,
    row_bytes: int,
) -> np.ndarray:
    """The visible part of one padded plane as a (rows, row_bytes) view, without copying."""
    if index >= len(planes) or index >= len(line_sizes):
        raise ValueError(f"{fmt}: plane {index} is missing ({len(planes)} planes given)")
    data = np.frombuffer(planes[index], np.uint8)
    line_size = line_sizes[index]
    # The last row's padding is not needed, so a trimmed buffer is accepted.
    needed = line_size * (rows - 1) + row_bytes
    if line_size < row_bytes or data.size < needed:
        raise ValueError(
            f"{fmt}: plane {index} is too short: {data.size} bytes at line size {line_size}, "
            f"need {rows} rows of {row_bytes} bytes"
        )
    return np.lib.stride_tricks.as_strided(
        data, shape=(rows, row_bytes), strides=(line_size, 1), writeable=False
    )


def _copy(dst: np.ndarray, src: np.ndarray, lut: np.ndarray | None) -> None:
    """Copy src into dst, mapped through lut if one is given."""
    if lut is None:
        dst[...] = src
    else:
        cv2.LUT(src, lut, dst=dst)


def planes_to_rgb(
    fmt: str,
    width: int,
    height: int,
    planes: Sequence[Buffer],
    line_sizes: Sequence[int],
) -> np.ndarray:
    """Convert a frame's raw planes to packed RGB.

    Args:
        fmt: PyAV pixel format name: one of ``FORMAT_CONVERSIONS`` or ``"rgb24"``.
        width: Frame width in pixels.
        height: Frame height in pixels.
        planes: One buffer per plane, laid out as PyAV's ``frame.planes``: rows
            of ``line_sizes[i]`` bytes, of which only the first ones are pixels.
            4:2:0 chroma planes have ``ceil(height / 2)`` rows.
        line_sizes: Bytes per row of each plane, padding included.

    Returns:
        A new (height, width, 3) uint8 array.

    Raises:
        ValueError: If the format is unsupported, a size is not positive, or a
            plane is missing or too short.
    """
    if fmt != "rgb24" and fmt not in FORMAT_CONVERSIONS:
        raise ValueError(f"unsupported pixel format {fmt!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt}: invalid frame size {width}x{height}")
    if fmt == "rgb24":
        packed = _plane(fmt, planes, line_sizes, 0, height, width * 3)
        return packed.reshape(height, width, 3).copy()
    if fmt == "gray":
        return cv2.cvtColor(_plane(fmt, planes, line_sizes, 0, height, width), cv2.COLOR_GRAY2RGB)

    # OpenCV's 4:2:0 conversions need even sizes. An odd size gets an extra
    # luma row/column that is left unset: each output pixel depends only on its
    # own luma, and the extra ones are cropped off the result.
    even_width, even_height = width + width % 2, height + height % 2
    chroma_rows = even_height // 2
    luma_lut, chroma_lut = (
        (_FULL_TO_VIDEO_LUMA, _FULL_TO_VIDEO_CHROMA) if fmt == "yuvj420p" else (None, None)
    )
    yuv = np.empty((even_height * 3 // 2, even_width), np.uint8)
    luma = yuv[:even_height]
    _copy(luma[:height, :width], _plane(fmt, planes, line_sizes, 0, height, width), luma_lut)
    chroma = yuv[even_height:].reshape(-1)
    if fmt == "nv12":
        _copy(
            chroma.reshape(chroma_rows, even_width),
            _plane(fmt, planes, line_sizes, 1, chroma_rows, even_width),
            chroma_lut,
        )
    else:
        half = chroma.size // 2
        for index, part in ((1, chroma[:half]), (2, chroma[half:])):
            _copy(
                part.reshape(chroma_rows, even_width // 2),
                _plane(fmt, planes, line_sizes, index, chroma_rows, even_width // 2),
                chroma_lut,
            )
    rgb = cv2.cvtColor(yuv, FORMAT_CONVERSIONS[fmt])
    if (even_width, even_height) != (width, height):
        rgb = np.ascontiguousarray(rgb[:height, :width])
    return rgb


def rgb_to_i420(
    image: Buffer | np.ndarray, width: int, height: int, fmt: str | None = "RGB"
) -> np.ndarray:
    """Convert a packed RGB or RGBA image to I420 (yuv420p, video range).

    yuv420p frames must have even sizes, so an odd width or height is rounded
    up by repeating the last column or row.

    Args:
        image: Packed pixels, ``width * height`` of them.
        width: Image width in pixels.
        height: Image height in pixels.
        fmt: ``"RGB"`` or ``"RGBA"`` as in Pipecat's ``OutputImageRawFrame.format``;
            None means RGB.

    Returns:
        One contiguous (even_height * 3 // 2, even_width) uint8 array, ready for
        ``av.VideoFrame.from_ndarray(arr, format="yuv420p")``.

    Raises:
        ValueError: If the format is unsupported, a size is not positive, or the
            image does not hold exactly ``width * height`` pixels.
    """
    fmt = fmt or "RGB"
    if fmt not in _RGB_TO_I420:
        raise ValueError(f"unsupported image format {fmt!r} (expected RGB or RGBA)")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt}: invalid image size {width}x{height}")
    channels, code = _RGB_TO_I420[fmt]
    pixels = image if isinstance(image, np.ndarray) else np.frombuffer(image, np.uint8)
    expected = width * height * channels
    if pixels.dtype != np.uint8 or pixels.size != expected:
        raise ValueError(
            f"{fmt}: a {width}x{height} image needs {expected} uint8 values, "
            f"got {pixels.size} of {pixels.dtype}"
        )
    pixels = pixels.reshape(height, width, channels)
    if width % 2 or height % 2:
        pixels = cv2.copyMakeBorder(pixels, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(pixels, code)


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


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded video frame decodes on its own (VP8 and H264; another codec: no)."""
    match mime_type.lower():
        case "video/vp8":
            # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
            return len(data) > 0 and data[0] & 0x01 == 0
        case "video/h264":
            # Annex B, as aiortc reassembles it: an IDR slice (5) or the SPS (7) that starts one.
            return any(nal and nal[0] & 0x1F in (5, 7) for nal in data.split(b"\x00\x00\x01"))
    return False


VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)

# How aiortc's own encoders configure libvpx and libx264 for real-time WebRTC
# (and the bitrate bounds of each), so a peer sees the same stream it would
# from Pipecat's transport.
_VIDEO_CODECS = {
    "video/VP8": (
        "libvpx",
        vpx,
        {
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "noise-sensitivity": "4",
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

    def __init__(self, mime_type: str):
        """Initialize the encoder.

        Args:
            mime_type: The negotiated codec, ``"video/VP8"`` or ``"video/H264"``.

        Raises:
            ValueError: If the codec is not one the worker encodes.
        """
        if mime_type not in _VIDEO_CODECS:
            raise ValueError(f"no encoder for {mime_type!r} (have {', '.join(VIDEO_MIME_TYPES)})")
        self.mime_type = mime_type
        self._name, self._limits, self._options = _VIDEO_CODECS[mime_type]
        self._codec: av.VideoCodecContext | None = None
        self._bitrate = self._limits.DEFAULT_BITRATE

    @property
    def bitrate(self) -> int:
        """Target bitrate in bits per second."""
        return self._bitrate

    @bitrate.setter
    def bitrate(self, bitrate: int) -> None:
        self._bitrate = max(self._limits.MIN_BITRATE, min(bitrate, self._limits.MAX_BITRATE))

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
            codec.options = {**self._options, "bufsize": rate, "minrate": rate, "maxrate": rate}
        else:
            codec.framerate = fractions.Fraction(h264.MAX_FRAME_RATE, 1)
            codec.profile = "Baseline"
            codec.options = self._options
        return codec


class OpusEncoder:
    """Encodes a bot's mono audio as Opus, one packet per 20 ms frame, as aiortc configures it."""

    def __init__(self):
        """Initialize the encoder."""
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.bit_rate = 96000
        self._codec.format = "s16"
        self._codec.layout = "mono"
        self._codec.sample_rate = OPUS_SAMPLE_RATE
        self._codec.time_base = fractions.Fraction(1, OPUS_SAMPLE_RATE)
        self._codec.options = {"application": "voip"}
        self._pts = 0

    def encode(self, pcm: Buffer) -> bytes:
        """Encode 20 ms of packed s16 mono PCM at 48 kHz into one Opus packet.

        Raises:
            ValueError: If ``pcm`` is not exactly 20 ms.
        """
        samples = np.frombuffer(pcm, np.int16)
        if samples.size != OPUS_SAMPLE_RATE * OPUS_FRAME_MS // 1000:
            raise ValueError(f"Opus frames are {OPUS_FRAME_MS} ms at {OPUS_SAMPLE_RATE} Hz, got {samples.size} samples")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = OPUS_SAMPLE_RATE
        frame.pts = self._pts
        self._pts += samples.size
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class AudioFramer:
    """Resamples packed s16 PCM to a target rate and channel count and cuts it into exact chunks.

    The resampler is kept across pushes so its filter state carries over and
    consecutive chunks join without clicks. It delays its output slightly
    (about 1 ms at 16 kHz), and that tail is only released when the input
    format changes.
    """

    def __init__(self, sample_rate: int, num_channels: int, chunk_ms: int = 20):
        """Initialize the framer.

        Args:
            sample_rate: Output sample rate in Hz.
            num_channels: Output channel count.
            chunk_ms: Duration of each output chunk in milliseconds.

        Raises:
            ValueError: If a chunk would be empty.
        """
        if sample_rate <= 0 or num_channels <= 0 or chunk_ms <= 0:
            raise ValueError(
                f"invalid audio output: {sample_rate} Hz, {num_channels} channels, {chunk_ms} ms"
            )
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._chunk_bytes = sample_rate * chunk_ms // 1000 * num_channels * 2
        if self._chunk_bytes == 0:
            raise ValueError(f"{chunk_ms} ms at {sample_rate} Hz is less than one sample")
        self._pending = bytearray()
        self._source: tuple[int, int] | None = None
        self._resampler: av.AudioResampler | None = None

    @property
    def sample_rate(self) -> int:
        """Sample rate of the chunks returned by ``push``."""
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        """Channel count of the chunks returned by ``push``."""
        return self._num_channels

    @property
    def chunk_bytes(self) -> int:
        """Size of every chunk returned by ``push``."""
        return self._chunk_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered toward the next chunk."""
        return len(self._pending)

    def push(self, pcm: Buffer, sample_rate: int, num_channels: int) -> list[bytes]:
        """Add input audio and take every complete chunk now available.

        Args:
            pcm: Packed s16 PCM, any number of whole samples.
            sample_rate: Input sample rate in Hz.
            num_channels: Input channel count.

        Returns:
            Chunks of exactly ``chunk_bytes`` at the output format, possibly none.

        Raises:
            ValueError: If the input format is invalid or ``pcm`` ends mid-sample;
                nothing is buffered then.
        """
        data = memoryview(pcm).cast("B")
        if sample_rate <= 0 or num_channels <= 0:
            raise ValueError(f"invalid audio input: {sample_rate} Hz, {num_channels} channels")
        if len(data) % (2 * num_channels):
            # A partial sample would shift every later sample by a byte or channel.
            raise ValueError(
                f"{len(data)} bytes is not a whole number of {num_channels}-channel s16 samples"
            )

        chunks: list[bytes] = []
        if (sample_rate, num_channels) != self._source:
            if self._resampler is not None:
                for tail in self._resampler.resample(None):
                    chunks += self._cut(tail.to_ndarray())
            self._source = (sample_rate, num_channels)
            self._resampler = (
                None
                if self._source == (self._sample_rate, self._num_channels)
                else av.AudioResampler(
                    format="s16", layout=_layout(self._num_channels), rate=self._sample_rate
                )
            )
        if not data:
            return chunks
        if self._resampler is None:
            return chunks + self._cut(data)

        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(data, np.int16).reshape(1, -1), format="s16", layout=_layout(num_channels)
        )
        frame.sample_rate = sample_rate
        for resampled in self._resampler.resample(frame):
            chunks += self._cut(resampled.to_ndarray())
        return chunks

    def clear(self) -> None:
        """Drop buffered audio, including what the resampler holds."""
        self._pending.clear()
        self._source = None
        self._resampler = None

    def _cut(self, pcm: Buffer) -> list[bytes]:
        """Append output-format PCM and slice off whole chunks, copying each chunk once."""
        data = memoryview(pcm).cast("B")
        size = self._chunk_bytes
        chunks = []
        start = 0
        if self._pending:
            start = min(size - len(self._pending), len(data))
            self._pending += data[:start]
            if len(self._pending) < size:
                return chunks
            chunks.append(bytes(self._pending))
            self._pending.clear()
        end = start + (len(data) - start) // size * size
        chunks.extend(bytes(data[offset : offset + size]) for offset in range(start, end, size))
        self._pending += data[end:]
        return chunks


def _layout(num_channels: int) -> str:
    """FFmpeg's default channel layout for a channel count ("1c" is mono, "2c" stereo)."""
    return f"{num_channels}c"
