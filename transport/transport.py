"""Pipecat's SmallWebRTC transport, for bots hosted by a worker.

The classes keep Pipecat's names, signatures and events. The input and output
processors are Pipecat's own; ``SmallWebRTCClient`` is where this host differs:
it reads the peer's encoded media from the engine over the IPC, decodes and
converts it here in the worker (colours with OpenCV, audio resampled and cut
into exact frames), and encodes the bot's media for the engine to send.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import av
from loguru import logger
from pipecat.frames.frames import (
    ClientConnectedFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    SpriteFrame,
    UserImageRawFrame,
    UserImageRequestFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.smallwebrtc import transport as pipecat_smallwebrtc
from pipecat.transports.video_in_sampler import _capture_framerate
from pipecat.utils.deprecation import warn_deprecated
from pipecat.utils.shared import acquires, releases
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given
from pydantic import BaseModel

from engine.common.protocol import SOURCE_BY_RECEIVER, MediaSource
from transport.connection import InputTrack, SmallWebRTCConnection
from transport.media import FORMAT_CONVERSIONS, AudioFramer, planes_to_rgb

# How long a reader waits for media before warning that none comes.
NO_MEDIA_WARNING_S = 2.0
# The bot reads audio in frames of this length.
AUDIO_IN_FRAME_MS = 20
# SmallWebRTC has one peer, so Pipecat keeps all its video samplers under one id.
_PEER_ID = pipecat_smallwebrtc._PEER_ID


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

    Manages the peer's audio/video streams and application messaging through
    the SmallWebRTCConnection interface; media crosses to the engine over IPC.
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

        Returns once the engine's encoder is within a few frames of this audio,
        so the pipeline runs at the wire's pace.

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
        """Drop the bot audio written but not yet encoded (the pipeline was interrupted)."""
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


class SmallWebRTCInputTransport(pipecat_smallwebrtc.SmallWebRTCInputTransport):
    """Input transport implementation for SmallWebRTC.

    Handles incoming audio and video streams from WebRTC peers, including user
    image requests and application message handling. Pipecat's own processor,
    reading through this host's ``SmallWebRTCClient``, with one difference a
    bot cannot see: video is sampled before it is converted, so only the
    frames the samplers pass cost a conversion to RGB.
    """

    def __init__(self, client: SmallWebRTCClient, params: TransportParams, **kwargs):
        """Initialize the WebRTC input transport.

        Args:
            client: The WebRTC client instance.
            params: Transport configuration parameters.
            **kwargs: Additional arguments passed to parent class.
        """
        super().__init__(client, params, **kwargs)

    def _sampler(self, video_source: str):
        return self._video_samplers._samplers.get((_PEER_ID, video_source))

    def _update_engine_capture(self, video_source: str) -> None:
        """Tell the engine whether the sampler uses a source's frames (framerate 0 uses only those requested)."""
        sampler = self._sampler(video_source)
        wanted = sampler is not None and (sampler.framerate != 0 or bool(sampler._requests))
        self._client._webrtc_connection.capture(video_source, wanted)

    async def capture_participant_media(self, source: str = MediaSource.CAMERA, framerate: int | None = None):
        """Capture media from a specific participant.

        Args:
            source: Media source to capture from. ("camera", "microphone", or "screenVideo")
            framerate: For a video source, frames per second to pass on. ``0`` passes
                on only the frames that answer image requests, and ``None`` passes on
                every frame.
        """
        await super().capture_participant_media(source, framerate)
        if source in (MediaSource.CAMERA, MediaSource.SCREEN_VIDEO):
            self._update_engine_capture(source)

    async def request_participant_image(self, frame: UserImageRequestFrame):
        """Request an image frame from the participant's video stream.

        The next frame of the requested source answers it, with the request's
        text and context flag.

        Args:
            frame: The user image request frame.
        """
        await super().request_participant_image(frame)
        self._update_engine_capture(frame.video_source or MediaSource.CAMERA)

    async def stop_video(self, video_source: str):
        """Answer the image requests waiting on a video source the peer turned off.

        Args:
            video_source: ``"camera"`` or ``"screenVideo"``.
        """
        await super().stop_video(video_source)
        self._update_engine_capture(video_source)

    async def remove_all_video(self):
        """Stop sampling video and answer the waiting image requests, e.g. on disconnect."""
        await super().remove_all_video()
        for video_source in (MediaSource.CAMERA, MediaSource.SCREEN_VIDEO):
            self._update_engine_capture(video_source)

    async def _receive_video(self, video_source: str):
        try:
            async for frame in self._client.read_raw_video(video_source):
                due, request_frame = self._video_samplers.sample(_PEER_ID, video_source)
                if request_frame and not self._sampler(video_source)._requests:
                    self._update_engine_capture(video_source)
                if not due:
                    continue
                video_frame = self._client.to_image_frame(frame, video_source)
                if video_frame is None:
                    continue
                if request_frame:
                    video_frame.text = request_frame.text
                    video_frame.append_to_context = request_frame.append_to_context
                    video_frame.request = request_frame
                await self.push_video_frame(video_frame)
        except Exception as e:
            logger.error(f"{self} exception receiving data: {e.__class__.__name__} ({e})")


class SmallWebRTCOutputTransport(pipecat_smallwebrtc.SmallWebRTCOutputTransport):
    """Output transport implementation for SmallWebRTC.

    Handles outgoing audio and video streams to WebRTC peers, including
    transport message sending. Pipecat's own processor, writing through this
    host's ``SmallWebRTCClient``.
    """

    def __init__(self, client: SmallWebRTCClient, params: TransportParams, **kwargs):
        """Initialize the WebRTC output transport.

        Args:
            client: The WebRTC client instance.
            params: Transport configuration parameters.
            **kwargs: Additional arguments passed to parent class.
        """
        super().__init__(client, params, **kwargs)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Process a frame; an interruption also drops the audio the engine has not encoded yet.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow in the pipeline.
        """
        if isinstance(frame, InterruptionFrame):
            self._client.clear_audio_out()
        await super().process_frame(frame, direction)


class SmallWebRTCTransport(BaseTransport):
    """WebRTC transport implementation for real-time communication.

    Provides bidirectional audio and video streaming over WebRTC connections
    with support for application messaging and connection event handling.

    Event handlers available:

    - on_client_connected(transport, client): Client connected to WebRTC session
    - on_client_disconnected(transport, client): Client disconnected from WebRTC session
    - on_client_message(transport, message, client): Received a data channel message
    - on_app_message(transport, message, sender): The same message, by current Pipecat's name

    Example::

        @transport.event_handler("on_client_connected")
        async def on_client_connected(transport, client):
            ...
    """

    def __init__(
        self,
        webrtc_connection: SmallWebRTCConnection,
        params: TransportParams,
        input_name: str | None = None,
        output_name: str | None = None,
    ):
        """Initialize the WebRTC transport.

        Args:
            webrtc_connection: The underlying WebRTC connection handler.
            params: Transport configuration parameters.
            input_name: Optional name for the input processor.
            output_name: Optional name for the output processor.
        """
        super().__init__(input_name=input_name, output_name=output_name)
        self._params = params
        self._callbacks = SmallWebRTCCallbacks(
            on_app_message=self._on_app_message,
            on_client_connected=self._on_client_connected,
            on_client_disconnected=self._on_client_disconnected,
            on_track_status=self._on_track_status,
        )
        self._client = SmallWebRTCClient(webrtc_connection, self._callbacks)
        self._input: SmallWebRTCInputTransport | None = None
        self._output: SmallWebRTCOutputTransport | None = None
        self._register_event_handler("on_app_message")
        self._register_event_handler("on_client_message")
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def get_client_id(self, client: Any) -> str:
        """The id of a client, as passed to ``on_client_connected``.

        Args:
            client: The client, as passed to the transport's client events.

        Returns:
            The peer connection's id.
        """
        return client.pc_id

    def input(self) -> SmallWebRTCInputTransport:
        """Get the input transport processor.

        Returns:
            The input transport for handling incoming media streams.
        """
        if not self._input:
            self._input = SmallWebRTCInputTransport(self._client, self._params, name=self._input_name)
        return self._input

    def output(self) -> SmallWebRTCOutputTransport:
        """Get the output transport processor.

        Returns:
            The output transport for handling outgoing media streams.
        """
        if not self._output:
            self._output = SmallWebRTCOutputTransport(self._client, self._params, name=self._output_name)
        return self._output

    async def send_image(self, frame: OutputImageRawFrame | SpriteFrame):
        """Send an image frame through the transport.

        Args:
            frame: The image frame to send.
        """
        if self._output:
            await self._output.queue_frame(frame, FrameDirection.DOWNSTREAM)

    async def send_audio(self, frame: OutputAudioRawFrame):
        """Send an audio frame through the transport.

        Args:
            frame: The audio frame to send.
        """
        if self._output:
            await self._output.queue_frame(frame, FrameDirection.DOWNSTREAM)

    async def _on_app_message(self, message: Any, sender: str):
        if self._input:
            await self._input.push_app_message(message)
        await self._call_event_handler("on_app_message", message, sender)
        await self._call_event_handler("on_client_message", message, sender)

    async def _on_client_connected(self, webrtc_connection):
        # The configured sources are captured before the handlers run, so a
        # handler that captures a source itself takes precedence.
        if self._input:
            for video_source, source_params in self._params.video_in_sources.items():
                if self._input._supports_video_in_source(video_source):
                    framerate = 0 if source_params.on_request_only else source_params.framerate
                    await self._input.capture_participant_media(source=video_source, framerate=framerate)
        await self._call_event_handler("on_client_connected", webrtc_connection)
        if self._input:
            await self._input.push_frame(ClientConnectedFrame())

    async def _on_client_disconnected(self, webrtc_connection):
        if self._input:
            await self._input.remove_all_video()
        await self._call_event_handler("on_client_disconnected", webrtc_connection)

    async def _on_track_status(self, source: str, enabled: bool):
        if self._input and source != MediaSource.MICROPHONE and not enabled:
            await self._input.stop_video(source)

    async def capture_participant_video(
        self,
        participant_id: str | None = None,
        framerate: int | None | NotGiven = NOT_GIVEN,
        video_source: str = MediaSource.CAMERA,
        *,
        on_request_only: bool = False,
    ):
        """Capture the peer's camera or screen share at a framerate.

        Args:
            participant_id: The peer's id, as from :meth:`get_client_id`. The
                older form ``capture_participant_video("camera")`` (a source as
                the first argument, or none) keeps its meaning: every frame.
            framerate: Frames per second to pass on, 30 if not given, or ``None``
                for every frame. It doesn't apply with ``on_request_only``.
            video_source: Video source to capture from ("camera" or "screenVideo").
            on_request_only: Pass on only the frames that answer image requests.
        """
        if participant_id is None or participant_id in (MediaSource.CAMERA, MediaSource.SCREEN_VIDEO):
            warn_deprecated(
                "`SmallWebRTCTransport.capture_participant_video(participant_id=None)` is "
                "deprecated since 1.13.0 and will be removed in 2.0.0. "
                "Use `capture_participant_video(participant_id, framerate, video_source)` instead.",
                stacklevel=2,
            )
            if participant_id is not None:
                video_source = participant_id
            framerate = framerate if is_given(framerate) else None
        elif not is_given(framerate):
            framerate = 30
        framerate = _capture_framerate(framerate, on_request_only, "SmallWebRTCTransport.capture_participant_video")
        if self._input:
            await self._input.capture_participant_media(source=video_source, framerate=framerate)

    async def capture_participant_audio(self, audio_source: str = MediaSource.MICROPHONE):
        """Capture audio from a specific participant.

        Args:
            audio_source: Audio source to capture from. (currently, "microphone" is the only supported option)
        """
        if self._input:
            await self._input.capture_participant_media(source=audio_source)
