"""Bots for the tests, chosen per session by ``runner_args.body["bot"]`` (``--bot tests.support.bots:bot``).

Each is a real Pipecat bot on this host's transport; none needs an API key.
"""

import asyncio

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndTaskFrame,
    Frame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams, VideoInSourceParams
from pipecat.workers.runner import WorkerRunner

from tests.support import runner_bot
from transport import SmallWebRTCTransport
from workers import demo_bot

SAMPLE_RATE = 48000


async def slow(runner_args):
    """The demo bot, after a start so slow the peer connects first."""
    await asyncio.sleep(1.5)
    await demo_bot.bot(runner_args)


async def renegotiating(runner_args):
    """The demo bot, asking its peer for a new offer as soon as both are connected (as a bot that changes its tracks)."""

    async def ask(connection):
        connection.ask_to_renegotiate()

    runner_args.webrtc_connection.add_event_handler("connected", ask)
    await demo_bot.bot(runner_args)


async def ending(runner_args):
    """The demo bot, ending by itself after a second."""
    try:
        await asyncio.wait_for(demo_bot.bot(runner_args), 1.0)
    except TimeoutError:
        pass


async def raising(runner_args):
    """A bot that fails a second into its session."""
    await asyncio.sleep(1.0)
    raise RuntimeError("this bot always fails")


async def hanging(runner_args):
    """A bot that never ends, whatever happens to its peer."""
    await asyncio.Event().wait()


async def chatty(runner_args):
    """Sends 60 messages before its peer can have opened the data channel, then echoes."""
    for index in range(60):
        runner_args.webrtc_connection.send_app_message({"type": "early", "index": index})
    await demo_bot.bot(runner_args)


async def greeting(runner_args):
    """Sends 20 numbered greetings through its transport's output before its pipeline runs, then echoes messages."""
    transport = SmallWebRTCTransport(webrtc_connection=runner_args.webrtc_connection, params=TransportParams())
    for index in range(20):
        await transport.output().send_message(OutputTransportMessageUrgentFrame(message={"greeting": index}))
    await run(transport, demo_bot.HostEcho("greeting", (320, 240)), enable_rtvi=False)


class Farewell(FrameProcessor):
    """On "leave", says a last message and ends its pipeline (its transport disconnects)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputTransportMessageFrame) and frame.message == {"command": "leave"}:
            await self.push_frame(OutputTransportMessageUrgentFrame(message={"farewell": "before closing"}))
            await self.push_frame(EndTaskFrame(), FrameDirection.UPSTREAM)
            return
        await self.push_frame(frame, direction)


async def farewell(runner_args):
    """Leaves when asked, then tries to send more through its transport and its connection."""
    transport = SmallWebRTCTransport(webrtc_connection=runner_args.webrtc_connection, params=TransportParams())
    await run(transport, Farewell(), enable_rtvi=False)
    await transport.output().send_message(OutputTransportMessageUrgentFrame(message={"farewell": "while closing"}))
    runner_args.webrtc_connection.send_app_message({"farewell": "after closing"})
    logger.info(f"{runner_args.webrtc_connection.pc_id}: the farewell bot sent its last two messages")


class Speaker(FrameProcessor):
    """Says a long tone when asked ("speak"); stops on "interrupt", as a user barging in would make it."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputTransportMessageFrame) and isinstance(frame.message, dict):
            command = frame.message.get("command")
            if command == "speak":
                # 10 s of a 440 Hz tone, as a TTS service would push it: faster than real time.
                t = np.arange(SAMPLE_RATE * 10) / SAMPLE_RATE
                tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
                step = SAMPLE_RATE // 10
                for start in range(0, len(tone), step):
                    await self.push_frame(OutputAudioRawFrame(tone[start : start + step].tobytes(), SAMPLE_RATE, 1))
                await self.push_frame(OutputTransportMessageUrgentFrame(message={"spoken": True}))
            elif command == "interrupt":
                await self.push_frame(OutputTransportMessageUrgentFrame(message={"interrupting": True}))
                await self.push_frame(InterruptionFrame())
            return
        await self.push_frame(frame, direction)


async def run(transport: SmallWebRTCTransport, processor: FrameProcessor, **params) -> None:
    """Run ``input -> processor -> output`` until the client leaves."""
    worker = PipelineWorker(
        Pipeline([transport.input(), processor, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None,
        **params,
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


async def speaker(runner_args):
    """A voice-only bot for the interruption test."""
    transport = SmallWebRTCTransport(
        webrtc_connection=runner_args.webrtc_connection,
        params=TransportParams(audio_in_enabled=False, audio_out_enabled=True),
    )
    await run(transport, Speaker(), enable_rtvi=False)


async def screen(runner_args):
    """Echoes the peer's screen share (not its camera), mirrored, at 320x240."""
    transport = SmallWebRTCTransport(
        webrtc_connection=runner_args.webrtc_connection,
        params=TransportParams(
            video_in_enabled=True,
            video_in_sources={"screenVideo": VideoInSourceParams(framerate=30)},
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=320,
            video_out_height=240,
        ),
    )
    await run(transport, demo_bot.HostEcho("screen", (320, 240)))


BOTS = {
    "slow": slow,
    "renegotiating": renegotiating,
    "ending": ending,
    "raising": raising,
    "hanging": hanging,
    "chatty": chatty,
    "greeting": greeting,
    "farewell": farewell,
    "speaker": speaker,
    "screen": screen,
    "runner": runner_bot.bot,
}


async def bot(runner_args):
    """The bot named by the request's ``"bot"`` field; the demo bot by default."""
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    await BOTS.get(body.get("bot"), demo_bot.bot)(runner_args)
