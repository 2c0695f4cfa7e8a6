"""The bot's handle on its peer, in the worker: Pipecat's ``SmallWebRTCConnection`` surface over the IPC.

The real peer connection lives in the engine. This object has the same name,
events and methods a bot or ``SmallWebRTCClient`` uses (``pc_id``,
``event_handler``, ``connect``, ``send_app_message``, the input tracks, ...) and
turns them into messages of ``engine.common.protocol``. It is control only: the
peer's media is decoded by its input tracks (``transport.peer_input``) and the
bot's is encoded by its outputs (``transport.bot_output``).
"""

import json
from functools import partial
from typing import Any

from loguru import logger
from pipecat.utils.base_object import BaseObject

from engine.common.link import Outbox
from engine.common.protocol import (
    AUDIO_TRANSCEIVER_INDEX,
    SCREEN_VIDEO_TRANSCEIVER_INDEX,
    SOURCE_BY_RECEIVER,
    VIDEO_TRANSCEIVER_INDEX,
    AppMessageOut,
    AudioIn,
    MediaCaptureSet,
    MediaSource,
    OutputOpen,
    PeerRenegotiate,
    PeerState,
    SessionClose,
    SessionConnect,
    VideoEncoderSettings,
    VideoIn,
    VideoInBacklog,
    VideoInKeyframeRequest,
)
from transport.bot_output import AudioOutput, VideoOutput
from transport.peer_input import InputTrack


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
        self._audio_out = AudioOutput(pc_id, outbox)
        self._video_out = VideoOutput(pc_id, outbox)
        for event in (
            "app-message", "track-started", "track-ended", "track-status",
            "connecting", "connected", "disconnected", "closed", "failed", "new",
        ):
            self._register_event_handler(event)

    @property
    def frames_dropped(self) -> int:
        """Peer frames dropped in the worker: read or decoded too late, or waiting for a keyframe."""
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
        """Drop the bot audio not yet sent to the peer (an interruption)."""
        self._audio_out.clear()

    def ask_to_renegotiate(self):
        """Ask the peer for a new offer."""
        self._outbox.send(PeerRenegotiate(self._pc_id))

    async def disconnect(self):
        """End the session: the peer gets ``peerLeft`` and its connection closes."""
        self.end("bot disconnected")

    def end(self, reason: str) -> None:
        """Mark the session over, telling the engine unless it is the one that ended it."""
        self._audio_out.close()
        self._video_out.close()
        for track in self._tracks.values():
            track.close()
        if not self._closed:
            self._closed = True
            self._outbox.send(SessionClose(self._pc_id, reason))

    def release(self) -> None:
        """Forget the event handlers once the session is over.

        They are the bot's closures (``SmallWebRTCClient``'s hold the client,
        which holds this connection): without this the connection, its tracks
        and their codecs would wait for a garbage collection to be freed.
        """
        for handler in self._event_handlers.values():
            handler.handlers.clear()

    def deliver_media(self, message: AudioIn | VideoIn | VideoInBacklog, payload: list) -> None:
        """Route a frame (or a source's backlog) from the engine to its input track."""
        source = MediaSource.MICROPHONE if isinstance(message, AudioIn) else message.source
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
            self._audio_out.open()
        self._outbox.send(OutputOpen(self._pc_id, audio, audio_auto_silence, video))

    async def write_audio(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        """Send bot audio, encoded here as 20 ms Opus packets, returning once the engine's sender is close behind."""
        await self._audio_out.write(pcm, sample_rate, num_channels)

    def write_video(self, image, width: int, height: int, fmt: str | None) -> None:
        """Send a bot video frame (packed RGB or RGBA), encoded here; an older one not yet encoded is replaced."""
        self._video_out.write(image, width, height, fmt)

    def handle_video_codec(self, mime_type: str, encoder: VideoEncoderSettings) -> None:
        """The peer's connection negotiated this video codec; encode in it as ``encoder`` says."""
        self._video_out.set_codec(mime_type, encoder)

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
        """The engine's sender took (or dropped) bot audio up to ``seq``."""
        self._audio_out.acknowledge(seq)

    async def handle_closed(self) -> None:
        """The session is over on the engine's side."""
        self._closed = True
        self._audio_out.close()
        if self._state != "closed":
            await self.handle_state("closed")
