"""The bot's media on its way to the peer: encoded here in the worker, so the engine only packetizes it.

``AudioOutput`` cuts the bot's audio into 20 ms frames, encodes them as Opus
and keeps at most ``AUDIO_OUT_WINDOW_MS`` of them unacknowledged.
``VideoOutput`` converts the bot's images and encodes them off the event loop,
and stops encoding a picture that does not change once it has sharpened.
"""

import asyncio
import time
from typing import Any, NamedTuple

import numpy as np
from loguru import logger

from engine.common.link import Outbox
from engine.common.protocol import (
    AUDIO_OUT_WINDOW_MS,
    OPUS_FRAME_MS,
    OPUS_SAMPLE_RATE,
    VIDEO_QUEUE_FRAMES,
    AudioOut,
    AudioOutClear,
    MediaKind,
    MediaLane,
    VideoEncoderSettings,
    VideoOut,
)
from transport.media.codecs import (
    DEFAULT_VIDEO_ENCODER,
    OPUS_INPUT_RATES,
    VIDEO_TIME_BASE,
    OpusEncoder,
    VideoEncoder,
)
from transport.media.colour import rgb_to_i420
from transport.media.framing import AudioFramer


class AudioOutput:
    """The bot's audio on its way to the peer: 20 ms Opus packets, numbered, acknowledged by the engine's sender.

    Nothing is sent until ``open()`` (the bot's output has audio).
    """

    def __init__(self, pc_id: str, outbox: Outbox):
        """Initialize the output.

        Args:
            pc_id: The session's id.
            outbox: Where the encoded packets go.
        """
        self._pc_id = pc_id
        self._outbox = outbox
        self._framer: AudioFramer | None = None
        self._encoder: OpusEncoder | None = None
        self._sent = 0
        self._acked = 0
        self._acked_event = asyncio.Event()
        self._opened = False
        self._closed = False

    def open(self) -> None:
        """Start encoding the audio written from now on."""
        self._opened = True

    async def write(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        """Send PCM as 20 ms Opus packets, returning once no more than the window is unacknowledged.

        The bot so runs at the wire's pace, and an interruption (``clear``)
        finds little already on its way.

        Args:
            pcm: Packed s16 PCM.
            sample_rate: Its sample rate in Hz.
            num_channels: Its channel count.
        """
        if not self._opened:
            return
        if self._framer is None:
            # The first audio sets the encoder's rate: the bot's own, if libopus takes it.
            rate = sample_rate if sample_rate in OPUS_INPUT_RATES else OPUS_SAMPLE_RATE
            self._framer = AudioFramer(rate, 1, OPUS_FRAME_MS)
            self._encoder = OpusEncoder(rate)
        for chunk in self._framer.push(pcm, sample_rate, num_channels):
            self._sent += 1
            self._outbox.send(AudioOut(self._pc_id, self._sent), self._encoder.encode(chunk))
        while (self._sent - self._acked) * OPUS_FRAME_MS > AUDIO_OUT_WINDOW_MS and not self._closed:
            self._acked_event.clear()
            await self._acked_event.wait()

    def acknowledge(self, seq: int) -> None:
        """The engine's sender took (or dropped) the packets up to ``seq``."""
        self._acked = max(self._acked, seq)
        self._acked_event.set()

    def clear(self) -> None:
        """Drop the audio not yet sent to the peer: the part of a frame held here and the packets the engine holds."""
        if self._framer is not None:
            self._framer.clear()
        self._outbox.send(AudioOutClear(self._pc_id))

    def close(self) -> None:
        """Stop waiting for acknowledgements and encoding: the session is over."""
        self._closed = True
        self._opened = False
        self._acked_event.set()
        # Audio written from now on is dropped; the encoder is freed at once.
        self._framer = None
        self._encoder = None


class VideoOutput:
    """The bot's video on its way to the peer: converted to I420 and encoded off the event loop.

    Until the encoder takes a frame, a newer one replaces it (a late frame is
    worth nothing). Encoded frames go to the engine in order, numbered; one
    lost on the way costs a keyframe, not a broken picture.

    A picture identical to the last one encoded (a static avatar, which
    Pipecat repeats at the camera's frame rate) is encoded
    ``static_refine_frames`` more times, while the encoder sharpens it, then
    no more but once every ``static_refresh_s``; a keyframe request encodes it
    again at once, as a keyframe.
    """

    def __init__(self, pc_id: str, outbox: Outbox):
        """Initialize the output.

        Args:
            pc_id: The session's id.
            outbox: Where the encoded frames go.
        """
        self._pc_id = pc_id
        self._outbox = outbox
        self._pending: _Picture | None = None
        self._frame_ready = asyncio.Event()
        self._mime_type: str | None = None
        self._settings = DEFAULT_VIDEO_ENCODER
        self._bitrate: int | None = None
        self._keyframe_wanted = False
        self._task: asyncio.Task | None = None
        # The picture last encoded, how many times since it changed or was a keyframe, and when.
        self._last: _Picture | None = None
        self._last_encodes = 0
        self._last_encoded_at = 0.0
        self.unchanged_skipped = 0
        """Pictures not encoded because they were the same as the last one."""

    def write(self, image, width: int, height: int, fmt: str | None) -> None:
        """Queue an RGB(A) image, replacing one the encoder has not taken yet."""
        self._pending = _Picture(image, width, height, fmt)
        self._frame_ready.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def set_codec(self, mime_type: str, settings: VideoEncoderSettings = DEFAULT_VIDEO_ENCODER) -> None:
        """Encode in this codec, as ``settings`` say, from a keyframe on (a new negotiation)."""
        self._mime_type = mime_type
        self._settings = settings
        # A restarted connection's new track waits for a keyframe, and a static picture would make none.
        self.request_keyframe()

    def set_bitrate(self, bitrate: int) -> None:
        """Encode at this bitrate (the peer's estimate)."""
        self._bitrate = bitrate

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe; with no new picture coming, the last one again."""
        self._keyframe_wanted = True
        if self._pending is None and self._last is not None:
            self._pending = self._last
            self._frame_ready.set()

    def close(self) -> None:
        """Stop encoding, and release the images held for the encoder."""
        self._pending = None
        self._last = None
        if self._task is not None:
            self._task.cancel()

    def _worth_encoding(self, unchanged: bool, fresh_encoder: bool) -> bool:
        """Whether to encode a picture: it changed, a keyframe is due, it is still sharpening, or a refresh is due."""
        if not unchanged or fresh_encoder or self._keyframe_wanted:
            return True
        if self._last_encodes <= self._settings.static_refine_frames:
            return True
        refresh_s = self._settings.static_refresh_s
        return refresh_s > 0 and time.monotonic() - self._last_encoded_at >= refresh_s

    async def _run(self) -> None:
        encoder: VideoEncoder | None = None
        index = 0
        warned = False
        while True:
            await self._frame_ready.wait()
            self._frame_ready.clear()
            picture, self._pending = self._pending, None
            if picture is None or self._mime_type is None:
                continue  # the engine has not said which codec the peer takes yet
            try:
                fresh_encoder = encoder is None or (encoder.mime_type, encoder.settings) != (self._mime_type, self._settings)
                if fresh_encoder:
                    encoder = VideoEncoder(self._mime_type, self._settings)
                unchanged = self._last is not None and picture.same_as(self._last)
                if not self._worth_encoding(unchanged, fresh_encoder):
                    self.unchanged_skipped += 1
                    continue
                if self._bitrate is not None:
                    encoder.bitrate = self._bitrate
                keyframe, self._keyframe_wanted = self._keyframe_wanted, False
                data, is_keyframe = await asyncio.to_thread(_encode, encoder, picture, keyframe)
            except ValueError as e:
                if not warned:
                    logger.warning(f"{self._pc_id}: dropping bot video: {e}")
                    warned = True
                continue
            self._last_encodes = 1 if is_keyframe or not unchanged else self._last_encodes + 1
            # Kept as bytes: a buffer the bot changes in place must not compare equal to itself.
            self._last = picture.frozen()
            self._last_encoded_at = time.monotonic()
            if data:
                index += 1
                self._outbox.send_bounded(
                    MediaLane(self._pc_id, MediaKind.VIDEO), VIDEO_QUEUE_FRAMES, VideoOut(self._pc_id, index, is_keyframe), data
                )


class _Picture(NamedTuple):
    """An image of the bot's as ``write()`` took it: packed RGB(A) pixels, their size and format."""

    image: Any
    width: int
    height: int
    fmt: str | None

    def same_as(self, other: "_Picture") -> bool:
        """Whether the two are the same picture (the same object first: Pipecat repeats one; else the same bytes)."""
        if (self.width, self.height, self.fmt) != (other.width, other.height, other.fmt):
            return False
        return self.image is other.image or _as_bytes(self.image) == other.image

    def frozen(self) -> "_Picture":
        """This picture with its pixels as ``bytes``, which stay as they are."""
        return self._replace(image=_as_bytes(self.image))


def _as_bytes(image) -> bytes:
    return image if isinstance(image, bytes) else np.ascontiguousarray(image).tobytes()


def _encode(encoder: VideoEncoder, picture: _Picture, keyframe: bool):
    i420 = rgb_to_i420(*picture)
    return encoder.encode(i420, int(time.monotonic() / VIDEO_TIME_BASE), keyframe)
