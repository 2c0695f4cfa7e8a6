"""The reference server: Pipecat's own SmallWebRTCTransport running an echo bot.

What our host is measured against and what :class:`tests.support.client.TestPeer`
is proven against. One FastAPI app, served by uvicorn, with the routes of
Pipecat's development runner (``pipecat/runner/run.py``):

- ``POST /api/offer`` and ``PATCH /api/offer`` through ``SmallWebRTCRequestHandler``;
- ``POST /start`` and ``POST``/``PATCH /sessions/{sessionId}/api/offer`` (the web
  client's flow; ``/start`` hands out the (empty) ICE server list);
- ``GET /status``.

Each new peer connection gets a bot session, a background task running
``transport.input() -> Echo -> transport.output()`` under a ``WorkerRunner``
(the new name of ``PipelineRunner``) that doesn't handle SIGINT.

Sample rates: aiortc decodes Opus to 48 kHz (stereo), and its Opus encoder
takes 48 kHz, so input and output run at 48000 Hz mono. Pipecat then only
downmixes the input; nothing is resampled, and the echo is the audio it got.

Video: the camera is captured at every frame (``capture_participant_video(...,
framerate=None)``) and sent back as is (``video_out_is_live``), at the
``--width`` x ``--height`` of the output track; frames of another size are
resized by Pipecat's output transport. The picture is not mirrored.

ICE: all candidates are on 127.0.0.1 (``restrict_host_addresses``) and the ICE
server list is empty. Pipecat's ``SmallWebRTCConnection`` turns ``None`` or ``[]``
into ``RTCConfiguration(iceServers=[])`` (only ``None`` would make aiortc use
``stun:stun.l.google.com:19302``); as a guard, aiortc's default list is emptied
in this process too.

Run: ``python -m tests.bench.reference_server --host 127.0.0.1 --port 7870 --width 320 --height 240``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

# Importing pipecat's SmallWebRTC modules requires aiortc/av/cv2 only.
from aiortc.rtcicetransport import RTCIceGatherer  # noqa: E402
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from loguru import logger
from pipecat.frames.frames import (  # noqa: E402
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.request_handler import (  # noqa: E402
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from engine.ice import restrict_host_addresses

SAMPLE_RATE = 48000


class Echo(FrameProcessor):
    """Sends back what comes in: audio as audio, camera frames as video, app messages as ``{"echo": ...}``."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Turn input frames into the matching output frames; pass the rest on."""
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                await self.push_frame(
                    OutputAudioRawFrame(
                        audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
                    )
                )
                return
            if isinstance(frame, UserImageRawFrame):
                await self.push_frame(OutputImageRawFrame(image=frame.image, size=frame.size, format=frame.format))
                return
            if isinstance(frame, InputTransportMessageFrame):
                await self.push_frame(OutputTransportMessageUrgentFrame(message={"echo": frame.message}))
                return
        await self.push_frame(frame, direction)


async def run_bot(
    connection: SmallWebRTCConnection,
    width: int,
    height: int,
    rtvi: bool = False,
    video: bool = True,
    transport_class: type = SmallWebRTCTransport,
) -> None:
    """One bot session on ``connection``, until the peer leaves or the task is cancelled.

    ``transport_class`` is Pipecat's ``SmallWebRTCTransport`` here; the host runs
    the same bot with its own (``tests.bench.echo_bot``).
    """
    transport = transport_class(
        webrtc_connection=connection,
        params=TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=SAMPLE_RATE,
            audio_in_channels=1,
            audio_out_enabled=True,
            audio_out_sample_rate=SAMPLE_RATE,
            audio_out_channels=1,
            video_in_enabled=video,
            video_out_enabled=video,
            video_out_is_live=True,
            video_out_width=width,
            video_out_height=height,
            video_out_framerate=30,
        ),
    )
    worker = PipelineWorker(
        Pipeline([transport.input(), Echo(), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        enable_rtvi=rtvi,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport: SmallWebRTCTransport, client: SmallWebRTCConnection):
        if video:
            await transport.capture_participant_video(client.pc_id, framerate=None)

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: SmallWebRTCTransport, client: SmallWebRTCConnection):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def build_app(width: int = 320, height: int = 240, rtvi: bool = False, video: bool = True) -> FastAPI:
    """The reference server's FastAPI app."""
    handler = SmallWebRTCRequestHandler(ice_servers=[])
    sessions: dict[str, dict[str, Any]] = {}
    bots: set[asyncio.Task] = set()

    async def start_bot(connection: SmallWebRTCConnection) -> None:
        if connection.ice_servers != []:  # what it handed to RTCConfiguration(iceServers=...)
            raise RuntimeError("the reference server must not use ICE servers")
        task = asyncio.get_running_loop().create_task(run_bot(connection, width, height, rtvi, video))
        bots.add(task)
        task.add_done_callback(bots.discard)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await handler.close()
        for task in list(bots):
            task.cancel()
        if bots:
            await asyncio.wait(list(bots), timeout=5)

    app = FastAPI(lifespan=lifespan)

    async def offer(request: SmallWebRTCRequest) -> dict:
        answer = await handler.handle_web_request(request=request, webrtc_connection_callback=start_bot)
        if answer is None:
            raise HTTPException(status_code=500, detail="no answer")
        return answer

    @app.post("/api/offer")
    async def post_offer(request: Request):
        """SDP offer -> answer (a known pc_id renegotiates)."""
        return await offer(SmallWebRTCRequest.from_dict(await request.json()))

    @app.patch("/api/offer")
    async def patch_offer(request: SmallWebRTCPatchRequest):
        """Trickled ICE candidates."""
        await handler.handle_patch_request(request)
        return {"status": "success"}

    @app.get("/status")
    async def status():
        """Readiness."""
        return {"status": "ready", "transports": ["webrtc"]}

    @app.post("/start")
    async def start(request: Request):
        """A session for the web client's flow; the ICE server list is empty."""
        try:
            body = await request.json()
        except Exception:
            body = {}
        session_id = str(uuid.uuid4())
        sessions[session_id] = body.get("body") or {}
        return {"sessionId": session_id, "iceConfig": {"iceServers": []}}

    @app.api_route("/sessions/{session_id}/api/offer", methods=["POST", "PATCH"])
    async def session_offer(session_id: str, request: Request):
        """``/api/offer`` of a ``/start`` session."""
        if session_id not in sessions:
            return JSONResponse({"detail": "Invalid or not-yet-ready session_id"}, status_code=404)
        data = await request.json()
        if request.method == "POST":
            return await offer(
                SmallWebRTCRequest(
                    sdp=data["sdp"],
                    type=data["type"],
                    pc_id=data.get("pc_id"),
                    restart_pc=data.get("restart_pc"),
                    request_data=data.get("request_data") or data.get("requestData") or sessions[session_id],
                )
            )
        await handler.handle_patch_request(
            SmallWebRTCPatchRequest(
                pc_id=data["pc_id"], candidates=[IceCandidate(**c) for c in data.get("candidates", [])]
            )
        )
        return {"status": "success"}

    return app


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--rtvi", action="store_true", help="add Pipecat's RTVI processor (for the web client)")
    parser.add_argument("--log-level", default="INFO", help="loguru level for Pipecat's logs")
    parser.add_argument("--audio-only", action="store_true", help="a voice bot: no video in or out")
    args = parser.parse_args(argv)

    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    restrict_host_addresses(["127.0.0.1"])
    RTCIceGatherer.getDefaultIceServers = classmethod(lambda cls: [])  # never a public STUN server

    app = build_app(args.width, args.height, args.rtvi, video=not args.audio_only)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
