#
# A bot written for Pipecat's development runner (`python runner_bot.py -t webrtc`),
# unchanged but for the import of SmallWebRTCTransport: it runs on the host and
# under Pipecat's runner alike. It uses the runner's documented pieces:
# RunnerArguments, PipelineTask, PipelineRunner, the transport's client events,
# and the request body. When the client connects it says which transport it
# was given.
#

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    UserImageRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.transports.base_transport import TransportParams

# from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from transport import SmallWebRTCTransport


class MirrorProcessor(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels)
            )
        elif isinstance(frame, UserImageRawFrame):
            await self.push_frame(OutputImageRawFrame(image=frame.image, size=frame.size, format=frame.format))
        else:
            await self.push_frame(frame, direction)


async def run_bot(webrtc_connection, runner_args: RunnerArguments):
    transport = SmallWebRTCTransport(
        webrtc_connection=webrtc_connection,
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            video_in_enabled=True,
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=320,
            video_out_height=240,
        ),
    )

    pipeline = Pipeline([transport.input(), MirrorProcessor(), transport.output()])

    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=48000, audio_out_sample_rate=48000),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        logger.info("Client connected")
        await transport.capture_participant_video(transport.get_client_id(client), framerate=30)
        client.send_app_message(
            {"body": runner_args.body, "session_id": runner_args.session_id, "transport": type(transport).__module__}
        )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("Client disconnected")
        await task.cancel()

    runner = PipelineRunner(handle_sigint=runner_args.handle_sigint)
    await runner.run(task)


async def bot(runner_args: RunnerArguments):
    """Main bot entry point, as Pipecat's runner calls it."""
    await run_bot(runner_args.webrtc_connection, runner_args)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
