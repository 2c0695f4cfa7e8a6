"""Pipecat's ``SmallWebRTCClient`` and its callbacks: the bot's media and messages, through the connection.

This is where the host differs from Pipecat. The peer's media arrives encoded
from the engine and is decoded here in the worker by the connection's input
tracks; the client converts the pictures to RGB (OpenCV) and resamples the
audio and cuts it into exact frames at the pipeline's rate. The bot's audio
and images go to the connection, which encodes them in the worker too; the
engine only packetizes them.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import av
from loguru import logger
from pipecat.frames.frames import (
    InputAudioRawFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
)
from pipecat.transports.base_transport import TransportParams
from pipecat.utils.shared import acquires, releases
from pydantic import BaseModel

from engine.common.protocol import SOURCE_BY_RECEIVER, MediaSource
from transport.connection import SmallWebRTCConnection
from transport.media.colour import FORMAT_CONVERSIONS, planes_to_rgb
from transport.media.framing import AudioFramer
from transport.peer_input import InputTrack

# How long a reader waits for media before warning that none comes.
NO_MEDIA_WARNING_S = 2.0
# The bot reads audio in frames of this length.
AUDIO_IN_FRAME_MS = 20


async def _ignore_track_status(source: str, enabled: bool) -> None:
    pass


class SmallWebRTCCallbacks(BaseModel):
    """Callback handlers for SmallWebRTC events.

    Parameters:
        on_app_message: Called when an application message is received.
        on_client_connected: Called when a client establishes connection.
        on_client_disconnected: Called when a client disconnects.
        on_track_status: Called with the source (``"microphone"``, ``"camera"`` or
            ``"screenVideo"``) and whether the peer is sending it.
    """

    on_app_message: Callable[[Any, str], Awaitable[None]]
    on_client_connected: Callable[[SmallWebRTCConnection], Awaitable[None]]
    on_client_disconnected: Callable[[SmallWebRTCConnection], Awaitable[None]]
    on_track_status: Callable[[str, bool], Awaitable[None]] = _ignore_track_status


class SmallWebRTCClient:
    """WebRTC client implementation for handling connections and media streams.

    Reads the peer's frames, decoded in the worker by the connection's input
    tracks, and gives the bot RGB images and exact audio frames at the
    pipeline's rate; writes the bot's audio and images to the connection,
    which encodes them for the engine to packetize. Application messages
    cross to the engine over the IPC.
    """

    FORMAT_CONVERSIONS = FORMAT_CONVERSIONS

    def __init__(self, webrtc_connection: SmallWebRTCConnection, callbacks: SmallWebRTCCallbacks):
        """Initialize the WebRTC client.

        Args:
            webrtc_connection: The underlying WebRTC connection handler.
            callbacks: Event callbacks for connection and message handling.
        """
        self._webrtc_connection = webrtc_connection
        self._callbacks = callbacks
        self._closing = False
        self._params: TransportParams | None = None
        self._in_sample_rate = 0
        self._out_sample_rate = 0
        self._audio_in_channels = 1
        self._audio_input_track: InputTrack | None = None
        self._video_input_track: InputTrack | None = None
        self._screen_video_track: InputTrack | None = None
        self._audio_output_open = False
        self._video_output_size: tuple[int, int] | None = None

        @webrtc_connection.event_handler("connected")
        async def on_connected(connection: SmallWebRTCConnection):
            await self._handle_client_connected()

        @webrtc_connection.event_handler("disconnected")
        async def on_disconnected(connection: SmallWebRTCConnection):
            logger.debug(f"{connection.pc_id}: peer disconnected (no keepalive)")

        @webrtc_connection.event_handler("closed")
        async def on_closed(connection: SmallWebRTCConnection):
            await self._handle_client_closed()

        @webrtc_connection.event_handler("app-message")
        async def on_app_message(connection: SmallWebRTCConnection, message: Any):
            await self._callbacks.on_app_message(message, connection.pc_id)

        @webrtc_connection.event_handler("track-status")
        async def on_track_status(connection: SmallWebRTCConnection, receiver_index: int, enabled: bool):
            source = SOURCE_BY_RECEIVER.get(receiver_index)
            if source:
                await self._callbacks.on_track_status(source, enabled)

    def _video_track(self, video_source: str) -> InputTrack | None:
        return self._video_input_track if video_source == MediaSource.CAMERA else self._screen_video_track

    def video_source_enabled(self, video_source: str) -> bool:
        """Whether the peer is sending a video source.

        Args:
            video_source: ``"camera"`` or ``"screenVideo"``.
        """
        track = self._video_track(video_source)
        return track is not None and track.is_enabled()

    async def _next(self, track_of: Callable[[], InputTrack | None]):
        """The next frame of a track, waiting while it is absent; warns when media stops coming."""
        while True:
            track = track_of()
            if track is None:
                await asyncio.sleep(0.01)
                continue
            try:
                return await asyncio.wait_for(track.recv(), timeout=NO_MEDIA_WARNING_S)
            except TimeoutError:
                if self.is_connected and track.is_enabled():
                    logger.warning(
                        f"{self._webrtc_connection.pc_id}: no {track.source} frame received within {NO_MEDIA_WARNING_S:g} s"
                    )

    async def read_raw_video(self, video_source: str):
        """Yield the peer's decoded video frames of a source, not yet converted to RGB.

        Args:
            video_source: "camera" or "screenVideo".

        Yields:
            ``av.VideoFrame`` objects, as the decoder produced them.
        """
        while True:
            yield await self._next(lambda: self._video_track(video_source))

    def to_image_frame(self, frame: av.VideoFrame, video_source: str) -> UserImageRawFrame | None:
        """Convert a decoded frame to RGB as a ``UserImageRawFrame``, or None if it cannot be."""
        planes = frame.planes
        try:
            rgb = planes_to_rgb(frame.format.name, frame.width, frame.height, planes, [p.line_size for p in planes])
        except ValueError as e:
            logger.warning(f"{self._webrtc_connection.pc_id}: dropping a {video_source} frame: {e}")
            return None
        image_frame = UserImageRawFrame(
            user_id=self._webrtc_connection.pc_id,
            image=rgb.tobytes(),
            size=(frame.width, frame.height),
            format="RGB",
        )
        image_frame.transport_source = video_source
        image_frame.pts = frame.pts
        return image_frame

    async def read_video_frame(self, video_source: str):
        """Read video frames from the WebRTC connection.

        Reads a video frame of the given source, converts it to RGB, and creates
        a UserImageRawFrame.

        Args:
            video_source: Video source to capture ("camera" or "screenVideo").

        Yields:
            UserImageRawFrame objects containing video data from the peer.
        """
        async for frame in self.read_raw_video(video_source):
            image_frame = self.to_image_frame(frame, video_source)
            if image_frame is not None:
                yield image_frame

    async def read_audio_frame(self):
        """Read audio frames from the WebRTC connection.

        Reads 20ms of audio at the pipeline's sample rate and channel count and
        creates an InputAudioRawFrame.

        Yields:
            InputAudioRawFrame objects containing audio data from the peer.
        """
        framer = AudioFramer(self._in_sample_rate, self._audio_in_channels, AUDIO_IN_FRAME_MS)
        self._webrtc_connection.capture(MediaSource.MICROPHONE, True)
        try:
            while True:
                frame = await self._next(lambda: self._audio_input_track)
                channels = len(frame.layout.channels)
                pcm = memoryview(frame.planes[0])[: frame.samples * channels * 2]  # packed s16
                for chunk in framer.push(pcm, frame.sample_rate, channels):
                    audio_frame = InputAudioRawFrame(
                        audio=chunk, sample_rate=self._in_sample_rate, num_channels=self._audio_in_channels
                    )
                    audio_frame.pts = frame.pts
                    yield audio_frame
        finally:
            self._webrtc_connection.capture(MediaSource.MICROPHONE, False)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Write an audio frame to the WebRTC connection.

        The connection encodes it as 20 ms Opus packets and this returns once
        no more than 40 ms of them wait for the engine's sender, so the
        pipeline runs at the wire's pace.

        Args:
            frame: The audio frame to transmit.

        Returns:
            True if the audio frame was written successfully, False otherwise.
        """
        if self._can_send() and self._audio_output_open:
            await self._webrtc_connection.write_audio(frame.audio, frame.sample_rate, frame.num_channels)
            return True
        return False

    async def write_video_frame(self, frame: OutputImageRawFrame) -> bool:
        """Write a video frame to the WebRTC connection.

        Args:
            frame: The video frame to transmit.

        Returns:
            True if the video frame was written successfully, False otherwise.
        """
        if not (self._can_send() and self._video_output_size):
            return False
        width, height = frame.size
        self._webrtc_connection.write_video(frame.image, width, height, frame.format)
        return True

    def clear_audio_out(self) -> None:
        """Drop the bot audio written but not yet sent to the peer (the pipeline was interrupted)."""
        if self._audio_output_open:
            self._webrtc_connection.clear_audio_out()

    async def setup(self, _params: TransportParams, frame):
        """Set up the client with transport parameters.

        Args:
            _params: Transport configuration parameters.
            frame: The initialization frame containing setup data.
        """
        self._params = _params
        self._audio_in_channels = _params.audio_in_channels
        self._in_sample_rate = _params.audio_in_sample_rate or frame.audio_in_sample_rate
        self._out_sample_rate = _params.audio_out_sample_rate or frame.audio_out_sample_rate

    @acquires("connection")
    async def connect(self):
        """Establish the WebRTC connection."""
        if self._webrtc_connection.is_connected():
            return
        logger.info("Connecting to Small WebRTC")
        await self._webrtc_connection.connect()

    @releases("connection")
    async def disconnect(self):
        """Disconnect from the WebRTC peer."""
        if not self.is_closing:
            logger.info("Disconnecting from Small WebRTC")
            self._closing = True
            await self._webrtc_connection.disconnect()
            self._drop_tracks()

    async def send_message(self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame):
        """Send an application message through the WebRTC connection.

        Messages sent before the data channel is open are queued by the engine
        and flushed, in order, once it opens.

        Args:
            frame: The message frame to send.
        """
        if self.is_closing:
            logger.debug("Discarding an app message: the peer connection is closing.")
            return
        self._webrtc_connection.send_app_message(frame.message)

    async def _handle_client_connected(self):
        # Before setup the pipeline is not ready; connect() comes after it.
        if not self._params:
            return
        connection = self._webrtc_connection
        self._audio_input_track = connection.audio_input_track()
        self._video_input_track = connection.video_input_track()
        self._screen_video_track = connection.screen_video_input_track()
        params = self._params
        if not self._audio_output_open and not self._video_output_size:
            self._audio_output_open = params.audio_out_enabled
            if params.video_out_enabled:
                self._video_output_size = (params.video_out_width, params.video_out_height)
            connection.open_output(
                params.audio_out_enabled, params.audio_out_auto_silence, bool(self._video_output_size)
            )
        await self._callbacks.on_client_connected(connection)

    def _drop_tracks(self):
        self._audio_input_track = None
        self._video_input_track = None
        self._screen_video_track = None

    async def _handle_client_closed(self):
        self._drop_tracks()
        # Only a peer that left on its own is reported; our own disconnect is not.
        if not self._closing:
            await self._callbacks.on_client_disconnected(self._webrtc_connection)

    def _can_send(self) -> bool:
        return self.is_connected and not self.is_closing

    @property
    def is_connected(self) -> bool:
        """Check if the WebRTC connection is established.

        Returns:
            True if connected to the peer.
        """
        return self._webrtc_connection.is_connected()

    @property
    def is_closing(self) -> bool:
        """Check if the connection is in the process of closing.

        Returns:
            True if the connection is closing.
        """
        return self._closing
