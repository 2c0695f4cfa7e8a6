"""Micro-benchmark of the engine-worker hop alone: real processes, ipc://, the engine's own link code.

The "engine" side (this process) binds :func:`engine.link.bind_router` and
sends as the engine does: peer media wrapped in ``engine.protocol`` messages
(``AudioIn``: 20 ms of 48 kHz stereo s16 from an ``av.AudioFrame``'s plane;
``VideoIn``: the three planes of a 640x480 yuv420p ``av.VideoFrame``), queued in
an :class:`engine.link.Outbox` lane and sent by its pump through
:func:`engine.link.send_to_worker`. The "worker" (a subprocess) connects
:func:`engine.link.connect_dealer`, decodes each header and answers as a bot
would: ``AudioOut`` + 20 ms of mono PCM, ``VideoOut`` + one 640x480 I420 frame,
through its own Outbox pump. Nothing is converted on either side: this is the
cost of the hop, not of the media work.

Figures: round trip (engine -> worker -> engine) p50/p99 with one message in
flight, then throughput with ``--window`` messages in flight, and the CPU each
process spent per round trip in the throughput phase.

Run: ``python -m tests.bench.ipc_bench`` (prints one JSON line per media kind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import uvloop
import zmq
import zmq.asyncio

from engine.link import Outbox, bind_router, connect_dealer, send_to_worker
from engine.protocol import AudioIn, AudioOut, VideoIn, VideoOut, WorkerRegister, decode, encode
from tests.bench import procstat

ROOT = Path(__file__).resolve().parents[2]
SESSION = "bench-session-0123456789abcdef0123456789abcdef"
WIDTH, HEIGHT = 640, 480


# ---------------------------------------------------------------- worker side


async def worker_main(endpoint: str, direct: bool) -> None:
    context = zmq.asyncio.Context()
    dealer = connect_dealer(context, endpoint, "bench-worker")
    outbox = Outbox("to engine")
    pump = asyncio.create_task(outbox.pump(lambda parts: dealer.send_multipart(parts, copy=False)))
    outbox.send(WorkerRegister("bench-worker", os.getpid(), "localhost", 1))
    audio_out = np.zeros(960, np.int16)  # 20 ms mono at 48 kHz, what the echo bot sends back
    # The worker sends encoded video; a frame the size of raw I420 bounds the hop from above.
    video_out = np.zeros((HEIGHT * 3 // 2, WIDTH), np.uint8)
    seq = 0

    async def send_direct(message, payload) -> None:
        await dealer.send_multipart([encode(message), payload], copy=False)

    send = send_direct if direct else None
    try:
        while True:
            parts = await dealer.recv_multipart(copy=False)
            message = decode(parts[0].buffer)
            if isinstance(message, AudioIn):
                seq += 1
                reply, payload = AudioOut(message.session_id, seq), audio_out
            elif isinstance(message, VideoIn):
                reply, payload = VideoOut(message.session_id, seq, True), video_out
            else:
                break
            if send is None:
                outbox.send(reply, payload)
            else:
                await send(reply, payload)
    finally:
        pump.cancel()
        dealer.close(linger=0)
        context.term()


# ---------------------------------------------------------------- engine side


class EngineSide:
    def __init__(self, router: zmq.asyncio.Socket, identity: bytes, direct: bool = False):
        self.router = router
        self.identity = identity
        self.direct = direct
        self.outbox = Outbox("to worker")
        self.pending: deque[float] = deque()
        self.rtts: list[float] = []
        self.replied = asyncio.Event()
        self.completed = 0
        self._pump = asyncio.create_task(self.outbox.pump(lambda parts: send_to_worker(router, identity, parts)))
        self._receive = asyncio.create_task(self.receive())

    async def receive(self) -> None:
        while True:
            parts = await self.router.recv_multipart(copy=False)
            decode(parts[1].buffer)
            now = time.perf_counter()
            if self.pending:
                self.rtts.append(now - self.pending.popleft())
            self.completed += 1
            self.replied.set()

    def send(self, kind: str, pts: int, audio_frame, video_frame) -> None:
        self.pending.append(time.perf_counter())
        if kind == "audio":
            size = audio_frame.samples * len(audio_frame.layout.channels) * 2
            message = AudioIn(SESSION, audio_frame.sample_rate, len(audio_frame.layout.channels), pts)
            payload = [memoryview(audio_frame.planes[0])[:size]]
            lane = (SESSION, "microphone")
        else:
            planes = video_frame.planes
            message = VideoIn(SESSION, "camera", video_frame.format.name, video_frame.width, video_frame.height,
                              [p.line_size for p in planes], pts)
            payload = list(planes)
            lane = (SESSION, "camera")
        if self.direct:
            # Straight to the socket, no mailbox and pump in between.
            asyncio.ensure_future(send_to_worker(self.router, self.identity, [encode(message), *payload]))
        else:
            # As the engine's reader does: a lane per (session, source); bounded, not
            # latest-only, so that with several in flight none is dropped here.
            self.outbox.send_bounded(lane, 10_000, message, *payload)

    def close(self) -> None:
        self._pump.cancel()
        self._receive.cancel()


def _stats(rtts: list[float]) -> dict:
    a = np.asarray(rtts) * 1e6
    return {
        "rtt_p50_us": round(float(np.percentile(a, 50)), 1),
        "rtt_p99_us": round(float(np.percentile(a, 99)), 1),
        "rtt_mean_us": round(float(a.mean()), 1),
        "samples": int(a.size),
    }


async def bench_kind(side: EngineSide, kind: str, worker_pid: int, count: int, seconds: float, window: int) -> dict:
    import av

    audio_frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    audio_frame.sample_rate = 48000
    for plane in audio_frame.planes:
        plane.update(bytes(plane.buffer_size))
    video_frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    payload_in = (960 * 2 * 2) if kind == "audio" else sum(p.buffer_size for p in video_frame.planes)
    payload_out = (960 * 2) if kind == "audio" else WIDTH * HEIGHT * 3 // 2

    async def ping_pong(n: int) -> None:
        for i in range(n):
            side.replied.clear()
            side.send(kind, i, audio_frame, video_frame)
            while side.pending:
                await side.replied.wait()
                side.replied.clear()

    await ping_pong(200)  # warm-up
    side.rtts.clear()
    await ping_pong(count)
    result = {"kind": kind, "payload_in_bytes": payload_in, "payload_out_bytes": payload_out, **_stats(side.rtts)}

    # Throughput: keep `window` round trips in flight for `seconds`.
    side.rtts.clear()
    pids = [os.getpid(), worker_pid]
    before = procstat.Snapshot.take(pids)
    start_completed = side.completed
    started = time.perf_counter()
    deadline = started + seconds
    sent = 0
    while time.perf_counter() < deadline:
        while len(side.pending) < window:
            side.send(kind, sent, audio_frame, video_frame)
            sent += 1
        side.replied.clear()
        await side.replied.wait()
    while side.pending:
        side.replied.clear()
        await side.replied.wait()
    elapsed = time.perf_counter() - started
    done = side.completed - start_completed
    cpu = before.delta(procstat.Snapshot.take(pids))
    result.update(
        window=window,
        throughput_msgs_s=round(done / elapsed, 1),
        throughput_MBps_in=round(done * payload_in / elapsed / 1e6, 1),
        loaded_rtt_p50_us=round(float(np.percentile(np.asarray(side.rtts) * 1e6, 50)), 1),
        cpu_us_per_roundtrip_engine=round(cpu[os.getpid()] / done * 1e6, 1),
        cpu_us_per_roundtrip_worker=round(cpu[worker_pid] / done * 1e6, 1),
    )
    return result


async def engine_main(kinds: list[str], count: int, seconds: float, window: int, direct: bool) -> list[dict]:
    runtime = tempfile.mkdtemp(prefix="ipc-bench-")
    endpoint = f"ipc://{runtime}/engine.sock"
    context = zmq.asyncio.Context()
    router = bind_router(context, endpoint)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.ipc_bench", "--worker", endpoint, *(["--direct"] if direct else [])], cwd=ROOT
    )
    results = []
    try:
        parts = await asyncio.wait_for(router.recv_multipart(copy=False), 30)
        identity = parts[0].bytes
        if not isinstance(decode(parts[1].buffer), WorkerRegister):
            raise RuntimeError("the worker did not register first")
        side = EngineSide(router, identity, direct)
        for kind in kinds:
            result = await bench_kind(side, kind, worker.pid, count, seconds, window)
            results.append({"path": "direct" if direct else "outbox", **result})
        side.close()
    finally:
        worker.terminate()
        worker.wait(10)
        router.close(linger=0)
        context.term()
        for name in os.listdir(runtime):
            os.unlink(os.path.join(runtime, name))
        os.rmdir(runtime)
    return results


def run(kinds=("audio", "video"), count: int = 2000, seconds: float = 3.0, window: int = 8, direct: bool = False) -> list[dict]:
    """Run the micro-benchmark in a fresh event loop; one result per kind.

    ``direct`` skips the Outbox (mailbox + pump) on both sides and sends straight to the socket.
    """
    return uvloop.run(engine_main(list(kinds), count, seconds, window, direct))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=2000, help="ping-pong round trips per kind")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput phase per kind")
    parser.add_argument("--window", type=int, default=8, help="round trips in flight in the throughput phase")
    parser.add_argument("--direct", action="store_true", help="also measure sending straight to the socket (no Outbox)")
    args = parser.parse_args(argv)
    if args.worker:
        uvloop.run(worker_main(args.worker, args.direct))
        return
    for direct in (False, True) if args.direct else (False,):
        for result in run(count=args.count, seconds=args.seconds, window=args.window, direct=direct):
            print(json.dumps({"bench": "ipc", **result}))


if __name__ == "__main__":
    main()
