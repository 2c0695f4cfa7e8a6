"""Pipecat's SmallWebRTC input and output processors, reading and writing through this host's ``SmallWebRTCClient``."""

from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, UserImageRequestFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc import transport as pipecat_smallwebrtc

from engine.common.protocol import MediaSource
from transport.client import SmallWebRTCClient

# SmallWebRTC has one peer, so Pipecat keeps all its video samplers under one id.
_PEER_ID = pipecat_smallwebrtc._PEER_ID


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
        """Process a frame; an interruption also drops the bot audio not yet sent to the peer.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow in the pipeline.
        """
        if isinstance(frame, InterruptionFrame):
            self._client.clear_audio_out()
        await super().process_frame(frame, direction)
