"""Micro-benchmark of the engine-worker hop alone: real processes, ipc://, the engine's own link code.

The "engine" side (this process) binds :func:`engine.common.link.bind_router` and
sends as the engine does: peer media wrapped in ``engine.common.protocol`` messages
(``AudioIn``: one 20 ms Opus packet; ``VideoIn``: one encoded 640x480 VP8
frame, both from the benchmark's clip), queued in an :class:`engine.common.link.Outbox`
lane and sent by its pump through :func:`engine.common.link.send_to_worker_now`,
both ends reading and writing through a :class:`engine.common.link.LinkSocket`. The
"worker" (a subprocess) connects :func:`engine.common.link.connect_dealer`, decodes
each header and answers as a bot would, with the same encoded payload
(``AudioOut``, ``VideoOut``), through its own Outbox pump. Nothing is decoded
or encoded on either side: this is the cost of the hop, not of the media work.

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

from engine.common.link import LinkSocket, Outbox, bind_router, connect_dealer, send_to_worker_now
from engine.common.protocol import (
    AudioIn,
    AudioOut,
    VideoIn,
    VideoOut,
    WorkerRegister,
    decode_from_engine,
    decode_from_worker,
    encode,
)
from tests.bench import procstat
from tests.bench.media import load_clip

ROOT = Path(__file__).resolve().parents[2]
SESSION = "bench-session-0123456789abcdef0123456789abcdef"
WIDTH, HEIGHT = 640, 480


# ---------------------------------------------------------------- worker side


async def worker_main(endpoint: str, direct: bool) -> None:
    context = zmq.Context()
    outbox = Outbox("to engine")
    stopped = asyncio.Event()
    seq = 0

    def handle(parts: list[zmq.Frame]) -> None:
        nonlocal seq
        message = decode_from_engine(parts[0].buffer)
        if isinstance(message, AudioIn):
            seq += 1
            reply, payload = AudioOut(message.session_id, seq), parts[1]
        elif isinstance(message, VideoIn):
            reply, payload = VideoOut(message.session_id, seq, False), parts[1]
        else:
            stopped.set()
            return
        if direct:
            link.send([encode(reply), payload])
        else:
            outbox.send(reply, payload)

    link = LinkSocket(connect_dealer(context, endpoint, "bench-worker"), handle)
    pump = asyncio.create_task(outbox.pump(link.send))
    outbox.send(WorkerRegister("bench-worker", os.getpid(), "localhost", 1))
    try:
        await stopped.wait()
    finally:
        pump.cancel()
        link.close()
        context.term()


# ---------------------------------------------------------------- engine side


class EngineSide:
    def __init__(self, router: LinkSocket, identity: bytes, direct: bool = False):
        self.router = router
        self.identity = identity
        self.direct = direct
        self.outbox = Outbox("to worker")
        self.pending: deque[float] = deque()
        self.rtts: list[float] = []
        self.replied = asyncio.Event()
        self.completed = 0
        self._pump = asyncio.create_task(self.outbox.pump(lambda parts: send_to_worker_now(router, identity, parts) is not False))

    def received(self, parts: list[zmq.Frame]) -> None:
        decode_from_worker(parts[1].buffer)
        now = time.perf_counter()
        if self.pending:
            self.rtts.append(now - self.pending.popleft())
        self.completed += 1
        self.replied.set()

    def send(self, kind: str, index: int, data: bytes) -> None:
        self.pending.append(time.perf_counter())
        if kind == "audio":
            message = AudioIn(SESSION, "audio/opus", index * 960)
            lane = (SESSION, "microphone")
        else:
            message = VideoIn(SESSION, "camera", "video/VP8", index, index * 3000)
            lane = (SESSION, "camera")
        payload = [data]
        if self.direct:
            # Straight to the socket, no mailbox and pump in between.
            send_to_worker_now(self.router, self.identity, [encode(message), *payload])
        else:
            # As the engine's reader does: a lane per (session, source); bounded, not
            # latest-only, so that with several in flight none is dropped here.
            self.outbox.send_bounded(lane, 10_000, message, *payload)

    def close(self) -> None:
        self._pump.cancel()


def _stats(rtts: list[float]) -> dict:
    a = np.asarray(rtts) * 1e6
    return {
        "rtt_p50_us": round(float(np.percentile(a, 50)), 1),
        "rtt_p99_us": round(float(np.percentile(a, 99)), 1),
        "rtt_mean_us": round(float(a.mean()), 1),
        "samples": int(a.size),
    }


async def bench_kind(side: EngineSide, kind: str, worker_pid: int, count: int, seconds: float, window: int) -> dict:
    clip = load_clip(WIDTH, HEIGHT)
    # A frame of the median size: the clip's first frames after its keyframe are unusually small.
    frames = clip.audio if kind == "audio" else clip.video
    data = sorted(frames, key=len)[len(frames) // 2]
    payload_in = payload_out = len(data)

    async def ping_pong(n: int) -> None:
        for i in range(n):
            side.replied.clear()
            side.send(kind, i, data)
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
            side.send(kind, sent, data)
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
    context = zmq.Context()
    registered = asyncio.get_running_loop().create_future()
    side: EngineSide | None = None

    def handle(parts: list[zmq.Frame]) -> None:
        if side is not None:
            side.received(parts)
        elif not registered.done():
            registered.set_result(parts)

    router = LinkSocket(bind_router(context, endpoint), handle)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.ipc_bench", "--worker", endpoint, *(["--direct"] if direct else [])], cwd=ROOT
    )
    results = []
    try:
        parts = await asyncio.wait_for(registered, 30)
        identity = parts[0].bytes
        if not isinstance(decode_from_worker(parts[1].buffer), WorkerRegister):
            raise RuntimeError("the worker did not register first")
        side = EngineSide(router, identity, direct)
        for kind in kinds:
            result = await bench_kind(side, kind, worker.pid, count, seconds, window)
            results.append({"path": "direct" if direct else "outbox", **result})
        side.close()
    finally:
        worker.terminate()
        worker.wait(10)
        router.close()
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
