#
# A bot file as Pipecat's examples write them, for `python echo-bot.py -t webrtc`
# (Pipecat's development runner) and, unchanged, for `smallwebrtc-host serve
# --bot echo-bot.py`: it asks Pipecat for its transport, with create_transport()
# (or, with "direct" in the request body, by building Pipecat's
# SmallWebRTCTransport itself), and runs a PipelineWorker under a WorkerRunner.
#
# It sends back what it gets: the user's audio and camera, and each app message
# as {"echo": message}. When the client connects it says which transport and
# connection it was given, and its runner arguments.
#

import os
import tempfile

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import (
    PipelineParams,
    PipelineWorker,
    ProcessorUnusablePolicy,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from pipecat.utils.file_storage import LocalFileStorage
from pipecat.workers.runner import WorkerRunner

# We use lambdas to defer transport parameter creation until the transport
# type is selected at runtime.
transport_params = {
    "webrtc": lambda: TransportParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        video_in_enabled=True,
        video_out_enabled=True,
        video_out_is_live=True,
        video_out_width=320,
        video_out_height=240,
    ),
    "twilio": lambda: FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
    ),
}


class Echo(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels)
            )
        elif isinstance(frame, UserImageRawFrame):
            await self.push_frame(OutputImageRawFrame(image=frame.image, size=frame.size, format=frame.format))
        elif isinstance(frame, InputTransportMessageFrame):
            await self.push_frame(OutputTransportMessageUrgentFrame(message={"echo": frame.message}))
        else:
            await self.push_frame(frame, direction)


def create_file_storage():
    """Where uploads would go: created on the first upload only."""
    return LocalFileStorage(os.path.join(tempfile.gettempdir(), "echo-bot-uploads"))


async def run_bot(transport: BaseTransport, runner_args: RunnerArguments):
    worker = PipelineWorker(
        Pipeline([transport.input(), Echo(), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=48000, audio_out_sample_rate=48000),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
        processor_unusable_policy=ProcessorUnusablePolicy.END,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport: BaseTransport, client: SmallWebRTCConnection):
        logger.info("Client connected")
        await transport.capture_participant_video(transport.get_client_id(client), framerate=30)
        client.send_app_message(
            {
                "transport": type(transport).__module__,
                "connection": type(client).__module__,
                "runner_args": {
                    "handle_sigint": runner_args.handle_sigint,
                    "handle_sigterm": runner_args.handle_sigterm,
                    "pipeline_idle_timeout_secs": runner_args.pipeline_idle_timeout_secs,
                    "body": runner_args.body,
                    "session_id": runner_args.session_id,
                    "has_cli_args": runner_args.cli_args is not None,
                    "file_storage": type(runner_args.file_storage).__name__,
                },
            }
        )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("Client disconnected")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


async def bot(runner_args: RunnerArguments):
    """Main bot entry point compatible with Pipecat Cloud."""
    if isinstance(runner_args.body, dict) and runner_args.body.get("direct"):
        webrtc_connection: SmallWebRTCConnection = runner_args.webrtc_connection
        transport = SmallWebRTCTransport(webrtc_connection=webrtc_connection, params=transport_params["webrtc"]())
    else:
        transport = await create_transport(runner_args, transport_params)
    await run_bot(transport, runner_args)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
