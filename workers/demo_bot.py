"""The built-in demo bot: you, echoed back through a worker.

A real Pipecat pipeline, ``transport.input() -> HostEcho -> transport.output()``:
your microphone comes back as the bot's voice, your camera comes back
mirrored with the worker's id and a frame counter drawn on it (proof the
picture went through a worker), RTVI chat messages (``client-message``, and
``send-text`` from Pipecat's web client) are answered, and any other app
message is echoed as ``{"echo": message}``. On
``client-ready`` the bot also sends an RTVI ``server-message``
``{"type": "host-info", "worker_id", "pc_id"}``.

Request body options (``request_data`` or the ``/start`` body): ``video_width``
and ``video_height`` of the bot's video (default 640x480); ``"video": false``
makes it a voice bot (no camera in, no video out).
"""

import os

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    LLMMessagesAppendFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams, VideoInSourceParams
from pipecat.workers.runner import WorkerRunner

from transport import SmallWebRTCTransport
from transport.media.colour import opencv

SAMPLE_RATE = 48000


def _is_rtvi(message) -> bool:
    # RTVI messages are Pipecat's RTVI processor's to answer, not the echo's.
    return isinstance(message, dict) and message.get("label") == "rtvi-ai"


class HostEcho(FrameProcessor):
    """Echoes the user's audio and (mirrored, annotated) video, and any non-RTVI app message."""

    def __init__(self, worker_id: str, size: tuple[int, int]):
        """Initialize the echo.

        Args:
            worker_id: Drawn on the video.
            size: Width and height of the bot's video.
        """
        super().__init__()
        self._worker_id = worker_id
        self._size = size
        self._frames = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Echo media and messages, pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(OutputAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels))
        elif isinstance(frame, UserImageRawFrame):
            await self.push_frame(self._annotate(frame))
        elif isinstance(frame, InputTransportMessageFrame) and not _is_rtvi(frame.message):
            await self.push_frame(OutputTransportMessageUrgentFrame(message={"echo": frame.message}))
        elif isinstance(frame, LLMMessagesAppendFrame):
            # RTVI "send-text" (Pipecat's web client's text box) meant for an LLM: this bot has none, it answers.
            text = " ".join(str(m.get("content", "")) for m in frame.messages if isinstance(m, dict))
            reply = {"type": "chat", "text": f"{self._worker_id} heard: {text}"}
            await self.push_frame(
                OutputTransportMessageUrgentFrame(message={"label": "rtvi-ai", "type": "server-message", "data": reply})
            )
        else:
            await self.push_frame(frame, direction)

    def _annotate(self, frame: UserImageRawFrame) -> OutputImageRawFrame:
        cv2 = opencv()  # only video sessions need it
        width, height = frame.size
        image = np.frombuffer(frame.image, dtype=np.uint8).reshape(height, width, 3)
        image = cv2.flip(image, 1)
        if (width, height) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_LINEAR)
        self._frames += 1
        label = f"{self._worker_id} #{self._frames}"
        # Bottom-left, small: the middle of the picture stays the user's.
        y = self._size[1] - 8
        cv2.putText(image, label, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, label, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        return OutputImageRawFrame(image=image.tobytes(), size=self._size, format="RGB")


async def bot(runner_args):
    """Run the echo bot for one peer until it leaves."""
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    size = (int(body.get("video_width", 640)), int(body.get("video_height", 480)))
    video = body.get("video", True) is not False
    worker_id = getattr(runner_args, "worker_id", "") or f"pid-{os.getpid()}"
    connection = runner_args.webrtc_connection
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            video_in_enabled=video,
            video_in_sources={"camera": VideoInSourceParams(framerate=30)} if video else {},
            video_out_enabled=video,
            video_out_is_live=True,
            video_out_width=size[0],
            video_out_height=size[1],
        ),
    )
    pipeline = Pipeline([transport.input(), HostEcho(worker_id, size), transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None,
    )
    # Pipecat adds RTVI (bot-ready, client messages) to the pipeline by itself.
    rtvi = worker.rtvi

    @rtvi.event_handler("on_client_ready")
    async def on_client_ready(rtvi):
        await rtvi.send_server_message({"type": "host-info", "worker_id": worker_id, "pc_id": connection.pc_id})

    @rtvi.event_handler("on_client_message")
    async def on_client_message(rtvi, message):
        text = message.data.get("text", "") if isinstance(message.data, dict) else message.data
        await rtvi.send_server_response(message, {"text": f"{worker_id} heard: {text}"})

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        logger.info(f"demo bot: {client.pc_id} connected on worker {worker_id}")

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info(f"demo bot: {client.pc_id} left")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
