"""The bot's handle on its peer, in the worker: Pipecat's ``SmallWebRTCConnection`` surface over the IPC.

The real peer connection lives in the engine. This object has the same name,
events and methods a bot or ``SmallWebRTCClient`` uses (``pc_id``,
``event_handler``, ``connect``, ``send_app_message``, the input tracks, ...) and
turns them into messages of ``engine.common.protocol``.
"""

import asyncio
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import av
from loguru import logger
from pipecat.utils.base_object import BaseObject

from engine.common.keyframes import KeyframeGate
from engine.common.link import Outbox
from engine.common.mailbox import Mailbox
from engine.common.protocol import (
    AUDIO_QUEUE_FRAMES,
    AUDIO_TRANSCEIVER_INDEX,
    OPUS_FRAME_MS,
    OPUS_SAMPLE_RATE,
    SCREEN_VIDEO_TRANSCEIVER_INDEX,
    SOURCE_BY_RECEIVER,
    VIDEO_QUEUE_FRAMES,
    VIDEO_TRANSCEIVER_INDEX,
    AppMessageOut,
    AudioIn,
    AudioOut,
    AudioOutClear,
    MediaCaptureSet,
    MediaKind,
    MediaLane,
    MediaSource,
    OutputOpen,
    PeerRenegotiate,
    PeerState,
    SessionClose,
    SessionConnect,
    VideoIn,
    VideoInKeyframeRequest,
    VideoOut,
)
from transport.media import (
    VIDEO_TIME_BASE,
    AudioFramer,
    MediaDecoder,
    OpusEncoder,
    VideoEncoder,
    is_keyframe,
    rgb_to_i420,
)

# Bot audio handed to the engine and not yet taken by its sender. write_audio
# waits while more is in flight, so the bot runs at the wire's pace and an
# interruption finds little already on its way.
AUDIO_OUT_WINDOW_MS = 40


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
        self._encoded: Mailbox[tuple[VideoIn, bytes]] = Mailbox(f"{source} encoded")
        self._gate = KeyframeGate(request_keyframe)
        self._decoding: asyncio.Task | None = None
        self._undecodable_warned = False
        self._enabled = True

    @property
    def dropped(self) -> int:
        """Frames dropped because the bot or the decoder fell behind, or they waited for a keyframe."""
        return self._decoded.dropped_total + self._encoded.dropped_total + self._gate.dropped_frames

    def deliver(self, message: AudioIn | VideoIn, payload: list) -> None:
        """Take an encoded frame from the engine, dropping by the track's policy."""
        data = payload[0].bytes
        if self.kind is MediaKind.AUDIO:
            for frame in self._decode(message.mime_type, data, message.pts) or ():
                self._decoded.put_bounded(self.source, frame, AUDIO_QUEUE_FRAMES)
            return
        self._encoded.put_bounded(self.source, (message, data), VIDEO_QUEUE_FRAMES)
        if self._decoding is None:
            self._decoding = asyncio.create_task(self._decode_video())

    def _decode(self, mime_type: str, data: bytes, pts: int) -> list | None:
        """The decoded frames, or None (logged once) if the frame does not decode."""
        try:
            return self._decoder.decode(mime_type, data, pts)
        except (ValueError, av.FFmpegError) as e:
            if not self._undecodable_warned:
                self._undecodable_warned = True
                logger.warning(f"{self.source}: dropping a frame that does not decode ({mime_type}): {e}")
            return None

    async def _decode_video(self) -> None:
        while True:
            message, data = await self._encoded.get()
            if not self._gate.admit(message.index, is_keyframe(message.mime_type, data)):
                continue
            frames = await asyncio.to_thread(self._decode, message.mime_type, data, message.pts)
            if frames is None:
                self._gate.break_stream()
            for frame in frames or ():
                self._decoded.put_latest(self.source, frame)

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
        """Stop decoding."""
        if self._decoding is not None:
            self._decoding.cancel()


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
        """Stop encoding."""
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


class SmallWebRTCConnection(BaseObject):
    """The worker-side connection to one peer, with Pipecat's events and methods.

    Events: ``app-message``, ``track-status``, and the connection states
    ``new``, ``connecting``, ``connected``, ``disconnected``, ``closed``, ``failed``.
    """

    def __init__(self, pc_id: str, outbox: Outbox):
        """Initialize the connection.

        Args:
            pc_id: The session's id, as the engine gave it to the client.
            outbox: Where messages for the engine go.
        """
        super().__init__()
        self._pc_id = pc_id
        self._outbox = outbox
        self._connect_invoked = False
        self._state: PeerState = "new"
        self._closed = False
        self._tracks = {
            index: InputTrack(
                source,
                partial(outbox.send, VideoInKeyframeRequest(pc_id, source)),
            )
            for index, source in SOURCE_BY_RECEIVER.items()
        }
        self._audio_seq = 0
        self._audio_acked = 0
        self._audio_acked_event = asyncio.Event()
        self._audio_out_framer: AudioFramer | None = None
        self._audio_out_encoder: OpusEncoder | None = None
        self._video_out = VideoOutput(pc_id, outbox)
        for event in (
            "app-message", "track-started", "track-ended", "track-status",
            "connecting", "connected", "disconnected", "closed", "failed", "new",
        ):
            self._register_event_handler(event)

    @property
    def frames_dropped(self) -> int:
        """Peer frames dropped because the bot read them too late."""
        return sum(track.dropped for track in self._tracks.values())

    @property
    def pc_id(self) -> str:
        """The peer connection identifier."""
        return self._pc_id

    async def connect(self):
        """Tell the engine the bot is ready; "connected" fires once the peer is (or already was)."""
        self._connect_invoked = True
        self._outbox.send(SessionConnect(self._pc_id))

    def is_connected(self) -> bool:
        """Whether the bot is connected and the peer is alive (keepalives within the window)."""
        return self._connect_invoked and self._state == "connected"

    def send_app_message(self, message: Any):
        """Send an application message (JSON-serializable) to the peer's data channel.

        The engine queues it until the channel opens (at most 50 messages).
        """
        self._outbox.send(AppMessageOut(self._pc_id, json.dumps(message)))

    def capture(self, source: str, enabled: bool) -> None:
        """Have the engine forward a source's frames, or stop."""
        self._outbox.send(MediaCaptureSet(self._pc_id, source, enabled))

    def clear_audio_out(self) -> None:
        """Drop the bot audio the engine has not encoded yet (an interruption)."""
        if self._audio_out_framer is not None:
            self._audio_out_framer.clear()
        self._outbox.send(AudioOutClear(self._pc_id))

    def ask_to_renegotiate(self):
        """Ask the peer for a new offer."""
        self._outbox.send(PeerRenegotiate(self._pc_id))

    async def disconnect(self):
        """End the session: the peer gets ``peerLeft`` and its connection closes."""
        self.end("bot disconnected")

    def end(self, reason: str) -> None:
        """Mark the session over, telling the engine unless it is the one that ended it."""
        self._video_out.close()
        for track in self._tracks.values():
            track.close()
        if not self._closed:
            self._closed = True
            self._audio_acked_event.set()
            self._outbox.send(SessionClose(self._pc_id, reason))

    def deliver_media(self, message: AudioIn | VideoIn, payload: list) -> None:
        """Route a frame from the engine to its input track."""
        source = message.source if isinstance(message, VideoIn) else MediaSource.MICROPHONE
        for track in self._tracks.values():
            if track.source == source:
                track.deliver(message, payload)

    def audio_input_track(self) -> InputTrack:
        """The peer's microphone."""
        return self._tracks[AUDIO_TRANSCEIVER_INDEX]

    def video_input_track(self) -> InputTrack:
        """The peer's camera."""
        return self._tracks[VIDEO_TRANSCEIVER_INDEX]

    def screen_video_input_track(self) -> InputTrack:
        """The peer's screen share."""
        return self._tracks[SCREEN_VIDEO_TRANSCEIVER_INDEX]

    def open_output(self, audio: bool, audio_auto_silence: bool, video: bool):
        """Have the engine send the bot's audio and/or video to the peer (silence between audio if asked)."""
        if audio:
            self._audio_out_framer = AudioFramer(OPUS_SAMPLE_RATE, 1, OPUS_FRAME_MS)
            self._audio_out_encoder = OpusEncoder()
        self._outbox.send(OutputOpen(self._pc_id, audio, audio_auto_silence, video))

    async def write_audio(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        """Send bot audio as 20 ms Opus packets, returning once the engine's sender is close behind."""
        framer = self._audio_out_framer
        if framer is None:
            return
        for chunk in framer.push(pcm, sample_rate, num_channels):
            self._audio_seq += 1
            self._outbox.send(AudioOut(self._pc_id, self._audio_seq), self._audio_out_encoder.encode(chunk))
        while (self._audio_seq - self._audio_acked) * OPUS_FRAME_MS > AUDIO_OUT_WINDOW_MS and not self._closed:
            self._audio_acked_event.clear()
            await self._audio_acked_event.wait()

    def write_video(self, image, width: int, height: int, fmt: str | None) -> None:
        """Send a bot video frame (packed RGB or RGBA); an older one not yet encoded is replaced."""
        self._video_out.write(image, width, height, fmt)

    def handle_video_codec(self, mime_type: str) -> None:
        """The peer's connection negotiated this video codec."""
        self._video_out.set_codec(mime_type)

    def handle_keyframe_request(self) -> None:
        """The peer (or the engine, after a dropped frame) needs a keyframe."""
        self._video_out.request_keyframe()

    def handle_bitrate(self, bitrate: int) -> None:
        """The peer's bandwidth estimate changed."""
        self._video_out.set_bitrate(bitrate)

    # ---- called by the worker's session actor, in message order ----

    async def handle_state(self, state: PeerState) -> None:
        """The engine reports the peer's state."""
        self._state = state
        await self._call_event_handler(state)

    async def handle_track_status(self, receiver_index: int, enabled: bool) -> None:
        """The peer turned a source on or off."""
        track = self._tracks.get(receiver_index)
        if track is not None:
            track.set_enabled(enabled)
        await self._call_event_handler("track-status", receiver_index, enabled)

    async def handle_app_message(self, text: str) -> None:
        """An application message from the peer."""
        try:
            message = json.loads(text)
        except ValueError as e:
            logger.warning(f"{self}: dropping an app message that is not JSON: {e}")
            return
        await self._call_event_handler("app-message", message)

    def handle_audio_ack(self, seq: int) -> None:
        """The engine's encoder took bot audio up to ``seq``."""
        self._audio_acked = max(self._audio_acked, seq)
        self._audio_acked_event.set()

    async def handle_closed(self) -> None:
        """The session is over on the engine's side."""
        self._closed = True
        self._audio_acked_event.set()
        if self._state != "closed":
            await self.handle_state("closed")
