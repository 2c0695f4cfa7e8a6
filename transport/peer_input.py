"""The peer's media as the worker receives it: encoded frames from the engine, decoded here for the bot."""

import asyncio
from collections.abc import Callable

import av
from loguru import logger

from engine.common.keyframes import KeyframeGate, is_keyframe
from engine.common.mailbox import Mailbox
from engine.common.protocol import (
    AUDIO_QUEUE_FRAMES,
    VIDEO_QUEUE_FRAMES,
    AudioIn,
    MediaSource,
    VideoIn,
    VideoInBacklog,
)
from transport.media.codecs import MediaDecoder


class InputTrack:
    """One of the peer's sources as the worker receives it: encoded frames from the engine, decoded here.

    Audio is decoded as it arrives (tens of microseconds a frame) and keeps the
    newest ``AUDIO_QUEUE_FRAMES`` frames. Video waits, at most
    ``VIDEO_QUEUE_FRAMES`` encoded frames, for its decoder, which runs off the
    event loop and never skips a frame: one lost on the way, or one that does
    not decode, costs a keyframe (``KeyframeGate``). The bot reads only the
    newest decoded picture.
    """

    def __init__(self, source: MediaSource, request_keyframe: Callable[[], None]):
        """Initialize the track.

        Args:
            source: The peer's source it carries.
            request_keyframe: Asks the engine to ask the peer for a keyframe of this source.
        """
        self.kind = source.kind
        self.source = source
        self._decoder = MediaDecoder()
        self._decoded: Mailbox[av.AudioFrame | av.VideoFrame] = Mailbox(f"{source} in")
        # Each item: the codec and its frames in order, (index, pts, bitstream); a backlog is one item.
        self._encoded: Mailbox[tuple[str, list[tuple[int, int, bytes]]]] = Mailbox(f"{source} encoded")
        self._gate = KeyframeGate(request_keyframe)
        self._decoding: asyncio.Task | None = None
        self._undecodable_warned = False
        self._enabled = True
        self._closed = False

    @property
    def dropped(self) -> int:
        """Frames dropped because the bot or the decoder fell behind, or they waited for a keyframe."""
        return self._decoded.dropped_total + self._encoded.dropped_total + self._gate.dropped_frames

    def deliver(self, message: AudioIn | VideoIn | VideoInBacklog, payload: list) -> None:
        """Take an encoded frame (or a backlog) from the engine, dropping by the track's policy (all of them once closed)."""
        if self._closed:
            return
        if isinstance(message, AudioIn):
            for frame in self._decode(message.mime_type, payload[0].bytes, message.pts) or ():
                self._decoded.put_bounded(self.source, frame, AUDIO_QUEUE_FRAMES)
            return
        if isinstance(message, VideoIn):
            frames = [(message.index, message.pts, payload[0].bytes)]
        else:
            frames = [
                (message.first_index + offset, pts, part.bytes) for offset, (pts, part) in enumerate(zip(message.pts, payload))
            ]
        self._encoded.put_bounded(self.source, (message.mime_type, frames), VIDEO_QUEUE_FRAMES)
        if self._decoding is None:
            self._decoding = asyncio.create_task(self._decode_video())

    def _decode(self, mime_type: str, data: bytes, pts: int) -> list | None:
        """The decoded frames, or None (logged once) if the frame does not decode."""
        decoder = self._decoder
        if decoder is None:
            return []  # closed while this frame waited for a decoder thread
        try:
            return decoder.decode(mime_type, data, pts)
        except (ValueError, av.FFmpegError) as e:
            if not self._undecodable_warned:
                self._undecodable_warned = True
                logger.warning(f"{self.source}: dropping a frame that does not decode ({mime_type}): {e}")
            return None

    async def _decode_video(self) -> None:
        while True:
            mime_type, frames = await self._encoded.get()
            admitted = [
                (pts, data) for index, pts, data in frames if self._gate.admit(index, is_keyframe(mime_type, data))
            ]
            if not admitted:
                continue
            pictures = await asyncio.to_thread(self._decode_in_order, mime_type, admitted)
            if pictures is None:
                self._gate.break_stream()
            elif pictures:
                self._decoded.put_latest(self.source, pictures[-1])

    def _decode_in_order(self, mime_type: str, frames: list[tuple[int, bytes]]) -> list | None:
        """Decode frames that follow each other; None (logged once) as soon as one does not decode."""
        pictures = []
        for pts, data in frames:
            decoded = self._decode(mime_type, data, pts)
            if decoded is None:
                return None
            pictures += decoded
        return pictures

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        """The next decoded frame."""
        return await self._decoded.get()

    def set_enabled(self, enabled: bool) -> None:
        """Record whether the peer sends this source (``trackStatus``)."""
        self._enabled = enabled

    def is_enabled(self) -> bool:
        """Whether the peer sends this source."""
        return self._enabled

    async def discard_old_frames(self) -> None:
        """Drop the frames waiting to be read."""
        while self._decoded.get_nowait() is not None:
            pass

    def close(self) -> None:
        """Stop decoding, and release the decoder and the frames waiting.

        A bot's pipeline may keep the track until a garbage collection; this
        frees the codec contexts, their threads and the pictures at once.
        """
        self._closed = True
        if self._decoding is not None:
            self._decoding.cancel()
        self._decoder = None
        while self._encoded.get_nowait() is not None:
            pass
        while self._decoded.get_nowait() is not None:
            pass
