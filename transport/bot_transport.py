"""Pipecat's ``SmallWebRTCTransport``: the ``BaseTransport`` a bot builds on its connection, with Pipecat's events."""

from typing import Any

from pipecat.frames.frames import (
    ClientConnectedFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    SpriteFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_transport import BaseTransport, TransportParams

# Pipecat's own classes, bound before a worker makes these names the host's (transport.pipecat_modules).
from pipecat.transports.smallwebrtc.connection import (
    SmallWebRTCConnection as PipecatSmallWebRTCConnection,
)
from pipecat.transports.smallwebrtc.transport import (
    SmallWebRTCTransport as PipecatSmallWebRTCTransport,
)
from pipecat.transports.video_in_sampler import _capture_framerate
from pipecat.utils.deprecation import warn_deprecated
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from engine.common.protocol import MediaSource
from transport.client import SmallWebRTCCallbacks, SmallWebRTCClient
from transport.connection import SmallWebRTCConnection
from transport.processors import SmallWebRTCInputTransport, SmallWebRTCOutputTransport


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

    Given Pipecat's own ``SmallWebRTCConnection`` (a bot run by Pipecat's
    runner, ``python bot.py -t webrtc``, whose peer is in the bot's process),
    it builds Pipecat's own ``SmallWebRTCTransport`` instead: the same bot runs
    there and on this host.
    """

    def __new__(
        cls,
        webrtc_connection: SmallWebRTCConnection | PipecatSmallWebRTCConnection,
        params: TransportParams,
        input_name: str | None = None,
        output_name: str | None = None,
    ):
        """This host's transport, or Pipecat's for a connection of Pipecat's."""
        if isinstance(webrtc_connection, PipecatSmallWebRTCConnection):
            return PipecatSmallWebRTCTransport(webrtc_connection, params, input_name, output_name)
        return super().__new__(cls)

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
