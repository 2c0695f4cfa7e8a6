"""The bot's media on its way to the peer: encoded here in the worker, so the engine only packetizes it.

``AudioOutput`` cuts the bot's audio into 20 ms frames, encodes them as Opus
and keeps at most ``AUDIO_OUT_WINDOW_MS`` of them unacknowledged.
``VideoOutput`` converts the bot's images and encodes them off the event loop.
"""

import asyncio
import time
from typing import Any

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
    VideoOut,
)
from transport.media.codecs import VIDEO_TIME_BASE, OpusEncoder, VideoEncoder
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
        self._closed = False

    def open(self) -> None:
        """Start encoding the audio written from now on."""
        self._framer = AudioFramer(OPUS_SAMPLE_RATE, 1, OPUS_FRAME_MS)
        self._encoder = OpusEncoder()

    async def write(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        """Send PCM as 20 ms Opus packets, returning once no more than the window is unacknowledged.

        The bot so runs at the wire's pace, and an interruption (``clear``)
        finds little already on its way.

        Args:
            pcm: Packed s16 PCM.
            sample_rate: Its sample rate in Hz.
            num_channels: Its channel count.
        """
        framer = self._framer
        if framer is None:
            return
        for chunk in framer.push(pcm, sample_rate, num_channels):
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
        self._acked_event.set()
        # Audio written from now on is dropped (write() needs a framer); the encoder is freed at once.
        self._framer = None
        self._encoder = None


class VideoOutput:
    """The bot's video on its way to the peer: converted to I420 and encoded off the event loop.

    Until the encoder takes a frame, a newer one replaces it (a late frame is
    worth nothing). Encoded frames go to the engine in order, numbered; one
    lost on the way costs a keyframe, not a broken picture.
    """

    def __init__(self, pc_id: str, outbox: Outbox):
        """Initialize the output.

        Args:
            pc_id: The session's id.
            outbox: Where the encoded frames go.
        """
        self._pc_id = pc_id
        self._outbox = outbox
        self._pending: tuple[Any, int, int, str | None] | None = None
        self._frame_ready = asyncio.Event()
        self._mime_type: str | None = None
        self._bitrate: int | None = None
        self._keyframe_wanted = False
        self._task: asyncio.Task | None = None

    def write(self, image, width: int, height: int, fmt: str | None) -> None:
        """Queue an RGB(A) image, replacing one the encoder has not taken yet."""
        self._pending = (image, width, height, fmt)
        self._frame_ready.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def set_codec(self, mime_type: str) -> None:
        """Encode in this codec from the next frame on (a new negotiation)."""
        self._mime_type = mime_type

    def set_bitrate(self, bitrate: int) -> None:
        """Encode at this bitrate (the peer's estimate)."""
        self._bitrate = bitrate

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe."""
        self._keyframe_wanted = True

    def close(self) -> None:
        """Stop encoding, and release the image waiting for the encoder."""
        self._pending = None
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        encoder: VideoEncoder | None = None
        index = 0
        warned = False
        while True:
            await self._frame_ready.wait()
            self._frame_ready.clear()
            frame, self._pending = self._pending, None
            if frame is None or self._mime_type is None:
                continue  # the engine has not said which codec the peer takes yet
            try:
                if encoder is None or encoder.mime_type != self._mime_type:
                    encoder = VideoEncoder(self._mime_type)
                if self._bitrate is not None:
                    encoder.bitrate = self._bitrate
                keyframe, self._keyframe_wanted = self._keyframe_wanted, False
                data, is_keyframe = await asyncio.to_thread(_encode, encoder, *frame, keyframe)
            except ValueError as e:
                if not warned:
                    logger.warning(f"{self._pc_id}: dropping bot video: {e}")
                    warned = True
                continue
            if data:
                index += 1
                self._outbox.send_bounded(
                    MediaLane(self._pc_id, MediaKind.VIDEO), VIDEO_QUEUE_FRAMES, VideoOut(self._pc_id, index, is_keyframe), data
                )


def _encode(encoder: VideoEncoder, image, width: int, height: int, fmt: str | None, keyframe: bool):
    i420 = rgb_to_i420(image, width, height, fmt)
    return encoder.encode(i420, int(time.monotonic() / VIDEO_TIME_BASE), keyframe)
