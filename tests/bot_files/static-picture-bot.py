#
# A bot that shows one picture and says nothing, as an avatar does: it queues
# one image when the client connects, and Pipecat's output repeats it at the
# camera's frame rate (video_out_is_live=False). For `smallwebrtc-host serve
# --bot static-picture-bot.py`; the picture is the tests' colour bars.
#

from pipecat.frames.frames import OutputImageRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from tests.support.client import colour_bars

WIDTH, HEIGHT = 320, 240

# Output only: the picture, repeated (not live), and the audio track's silence.
OUTPUT = {"audio_out_enabled": True, "video_out_enabled": True, "video_out_is_live": False}
transport_params = {"webrtc": lambda: TransportParams(**OUTPUT, video_out_width=WIDTH, video_out_height=HEIGHT)}


async def bot(runner_args: RunnerArguments):
    transport = await create_transport(runner_args, transport_params)
    worker = PipelineWorker(Pipeline([transport.input(), transport.output()]), params=PipelineParams())

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        picture = colour_bars(WIDTH, HEIGHT).tobytes()
        await worker.queue_frame(OutputImageRawFrame(image=picture, size=(WIDTH, HEIGHT), format="RGB"))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()
