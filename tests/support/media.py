"""What the transport's tests share: the engine's side of a session, and a bot pipeline to run on it.

The engine's side is made of the real parts: encoded frames as the engine
hands them to a worker (``encoded_video``, ``encoded_audio``) and a
``SmallWebRTCConnection`` on an outbox the test reads with ``tests.support.link``
(``engine_side``). The test plays the
engine by calling the connection's ``handle_*`` methods. ``running`` runs
Pipecat processors as a real pipeline, and a ``Recorder`` in it shows what
reached the bot.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import zmq
from pipecat.frames.frames import Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from engine.common.link import Outbox
from engine.common.protocol import AudioIn, MediaSource, VideoIn
from tests.support.client import colour_bars
from tests.support.link import DUE_S
from transport.connection import SmallWebRTCConnection
from transport.media.codecs import OpusEncoder, VideoEncoder
from transport.media.colour import rgb_to_i420

PC_ID = "pc"
# The peer's camera in the tests: 320x240 colour bars.
BARS = colour_bars(320, 240)


def tone(frequency: float, rate: int, channels: int, seconds: float, amplitude: int = 10000) -> bytes:
    """A sine tone as packed s16 PCM, the same in every channel."""
    t = np.arange(int(rate * seconds)) / rate
    mono = np.round(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return np.repeat(mono, channels).tobytes()


def encoded_video(
    count: int, keyframes: set[int], picture: np.ndarray = BARS, source: MediaSource = MediaSource.CAMERA
) -> list[tuple[VideoIn, list]]:
    """``count`` VP8 frames of ``picture`` numbered from 1, as the engine hands them over; ``keyframes`` by number."""
    encoder = VideoEncoder("video/VP8")
    height, width = picture.shape[:2]
    i420 = rgb_to_i420(picture, width, height)
    frames = []
    for index in range(1, count + 1):
        data, _ = encoder.encode(i420, index * 3000, keyframe=index in keyframes)
        frames.append((VideoIn(PC_ID, source, "video/VP8", index, index * 3000), [zmq.Frame(data)]))
    return frames


def encoded_audio(pcm: bytes) -> list[tuple[AudioIn, list]]:
    """48 kHz mono PCM as the 20 ms Opus frames the engine hands over (a partial last frame is left out)."""
    encoder = OpusEncoder()
    frame_bytes = 960 * 2
    return [
        (AudioIn(PC_ID, "audio/opus", start // 2), [zmq.Frame(encoder.encode(pcm[start : start + frame_bytes]))])
        for start in range(0, len(pcm) - frame_bytes + 1, frame_bytes)
    ]


def engine_side() -> tuple[SmallWebRTCConnection, Outbox]:
    """A bot's connection and the outbox it fills for the engine."""
    outbox = Outbox("engine")
    return SmallWebRTCConnection(PC_ID, outbox), outbox


class Recorder(FrameProcessor):
    """Passes every frame on, keeping those of the given types that go downstream."""

    def __init__(self, *types: type[Frame]):
        """Initialize the recorder.

        Args:
            *types: The frame types to keep.
        """
        super().__init__()
        self._types = types
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Keep the frame if it is wanted, and pass it on."""
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, self._types):
            self.frames.put_nowait(frame)
        await self.push_frame(frame, direction)

    async def next(self) -> Frame:
        """The next frame kept, once it comes."""
        return await asyncio.wait_for(self.frames.get(), DUE_S)


@asynccontextmanager
async def running(processors: list[FrameProcessor], audio_in_sample_rate: int = 16000) -> AsyncIterator[PipelineWorker]:
    """Run ``processors`` as a Pipecat pipeline, started on entry and cancelled on exit."""
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=audio_in_sample_rate, audio_out_sample_rate=24000),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_pipeline_started(worker, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), DUE_S)
        yield worker
    finally:
        await worker.cancel()
        await run
