"""The load generator: one process running K real aiortc client peers against one server.

Started by :mod:`tests.bench.run` (one or more such processes, so the client's
CPU is never counted against the server) and driven over stdin/stdout, one JSON
object per line:

- it connects its peers (staggered, concurrently) and prints ``{"event": "ready", ...}``;
- ``video`` (stdin): waits until every connected peer received echoed video
  (audio, with ``--audio-only``), prints ``{"event": "video", ...}``;
- ``start`` / ``stop``: the measurement window; on ``stop`` it prints ``{"event": "result", ...}``;
- ``quit``: closes every peer and exits.

Every peer is a :class:`tests.support.client.TestPeer` (the wire contract:
three transceivers, the ``chat`` channel with pings, PATCHed candidates,
renegotiation on request) that sends pre-encoded VP8/Opus packets
(:mod:`tests.bench.media`) instead of encoding. Received media is counted as
complete encoded frames at the jitter buffer's output: the receivers' decoder
input queue is replaced by a counting sink, so the load peers decode nothing
and buffer nothing (their remote tracks are never read). RTCP (receiver
reports, NACK, REMB) still flows as with a real client. The first peer may be
the probe: its sink passes frames on to aiortc's decoder and it reads both
tracks, measuring video echo latency from the frame index in the picture and
checking the echoed audio is not silence.

Run by hand: ``python -m tests.bench.loadgen --url http://127.0.0.1:7860 --peers 2 --probe``
then type ``video``, ``start``, ``stop``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import sys
import time
from typing import Any

import numpy as np

from tests.bench.media import Clip, load_clip, packet_tracks, read_index
from tests.support.client import SignallingError, TestPeer

AUDIO_SILENCE_RMS = 0.01  # of full scale


class CountingSink:
    """Stands in for an ``RTCRtpReceiver``'s decoder input queue.

    aiortc puts every complete encoded frame in that queue (from the event loop)
    and its decoder thread takes them out. This records the arrival time and,
    unless ``forward`` is given, drops the frame; the decoder thread then waits
    on it until the receiver stops (``None``).
    """

    def __init__(self, arrivals: list[float], forward: queue.Queue | None = None):
        self._arrivals = arrivals
        self._forward = forward
        self._idle: queue.Queue = queue.Queue()

    def put(self, item: Any) -> None:
        if item is None:
            (self._forward if self._forward is not None else self._idle).put(None)
            return
        self._arrivals.append(time.monotonic())
        if self._forward is not None:
            self._forward.put(item)

    def get(self) -> Any:
        return (self._forward if self._forward is not None else self._idle).get()


class BenchPeer(TestPeer):
    """A TestPeer that replays pre-encoded media and counts (probe: analyses) what comes back."""

    __test__ = False

    def __init__(self, base_url: str, clip: Clip, *, probe: bool = False, audio_only: bool = False, **kwargs: Any) -> None:
        super().__init__(base_url, width=clip.width, height=clip.height, **kwargs)
        self.clip = clip
        self.audio_only = audio_only
        self.probe = probe
        self.video_arrivals: list[float] = []
        self.audio_arrivals: list[float] = []
        self.video_track = None
        self.audio_track = None
        self.t_start: float | None = None
        self.t_connected: float | None = None
        # Probe only: (time, latency s, index) of echoed frames, (time, rms) of audio frames.
        self.latencies: list[tuple[float, float, int]] = []
        self.audio_levels: list[tuple[float, float]] = []
        self.first_echo_at: float | None = None
        self.unreadable_frames = 0
        self._last_index: int | None = None

    # ---- TestPeer hooks ----

    def _make_local_tracks(self):
        self.audio_track, self.video_track = packet_tracks(self.clip)
        if self.audio_only:
            self.video_track = None
        return self.audio_track, self.video_track

    @property
    def echo_arrivals(self) -> list[float]:
        """When echoed media arrived: video, or audio for a voice peer."""
        return self.audio_arrivals if self.audio_only else self.video_arrivals

    def _configure_pc(self, pc) -> None:
        transceivers = pc.getTransceivers()
        if self.video_track is not None:
            self.video_track.sender = transceivers[1].sender
        for transceiver, arrivals in ((transceivers[0], self.audio_arrivals), (transceivers[1], self.video_arrivals)):
            receiver = transceiver.receiver
            name = "_RTCRtpReceiver__decoder_queue"
            forward = getattr(receiver, name) if self.probe else None
            setattr(receiver, name, CountingSink(arrivals, forward))

    def _on_remote_track(self, track) -> None:
        if self.probe:
            self._spawn(self._analyse(track), pc_scoped=True)
        # Load peers never read their remote tracks: nothing was decoded, nothing is queued.

    # ---- probe ----

    async def _analyse(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    samples = frame.to_ndarray().astype(np.float32)
                    self.audio_levels.append((now, float(np.sqrt(np.mean(samples * samples))) / 32768.0))
                else:
                    self._on_echoed_video(frame, now)
        except MediaStreamError:
            pass

    def _on_echoed_video(self, frame, now: float) -> None:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height]
        index = read_index(luma)
        if index is None or self.video_track is None or index >= len(self.video_track.sent_at):
            self.unreadable_frames += 1
            return
        if index == self._last_index:
            return  # the same picture again: only its first arrival tells the latency
        self._last_index = index
        latency = now - self.video_track.sent_at[index]
        if 0 <= latency < self.clip.seconds / 2:
            self.latencies.append((now, latency, index))
            if self.first_echo_at is None:
                self.first_echo_at = now

    # ---- connecting ----

    async def bench_connect(self, body: Any) -> str:
        """Connect; returns "ok", "refused" (an HTTP error answer) or "failed"."""
        self.t_start = time.monotonic()
        try:
            await self.connect(request_data=body)
        except SignallingError as e:
            self.error = f"refused: {e}"
            return "refused"
        except (TimeoutError, ConnectionError, OSError) as e:
            self.error = f"failed: {type(e).__name__}: {e}"
            return "failed"
        self.t_connected = time.monotonic()
        return "ok"

    # ---- figures ----

    def window(self, t0: float, t1: float) -> dict:
        """Figures of this peer in the window [t0, t1] (monotonic)."""
        duration = t1 - t0
        bins = max(1, int(duration))
        video = np.asarray(self.video_arrivals)
        video = video[(video >= t0) & (video < t1)]
        audio = np.asarray(self.audio_arrivals)
        audio = audio[(audio >= t0) & (audio < t1)]
        video_bins = np.bincount(((video - t0) // 1).astype(int), minlength=bins)[:bins] if video.size else np.zeros(bins, int)
        first_video = self.video_arrivals[0] if self.video_arrivals else None
        out = {
            "video_fps": video.size / duration,
            "video_worst_bin": int(video_bins.min()),
            "video_bins": video_bins.tolist(),
            "audio_fps": audio.size / duration,
            "connect_s": (self.t_connected - self.t_start) if self.t_connected else None,
            "first_video_s": (first_video - self.t_start) if first_video is not None else None,
            "keyframes_requested": self.video_track.keyframes_sent if self.video_track else 0,
            "renegotiations": sum(1 for m in self.signalling if isinstance(m, dict) and m.get("type") == "renegotiate"),
            "errors": [repr(e) for e in self.errors[:3]],
        }
        if self.probe:
            lat = [l for t, l, _ in self.latencies if t0 <= t < t1]
            levels = [r for t, r in self.audio_levels if t0 <= t < t1]
            out.update(
                probe=True,
                latencies_ms=[round(l * 1000, 2) for l in lat],
                echoed_frames=len(lat),
                unreadable_frames=self.unreadable_frames,
                first_echo_s=(self.first_echo_at - self.t_start) if self.first_echo_at else None,
                audio_frames_decoded=len(levels),
                audio_nonsilent_ratio=(sum(r > AUDIO_SILENCE_RMS for r in levels) / len(levels)) if levels else 0.0,
                audio_rms_median=float(np.median(levels)) if levels else 0.0,
            )
        return out


class LoopLag:
    """How late the event loop wakes up (the client being starved would skew every figure)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        while True:
            expected = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.samples.append((now, max(0.0, now - expected)))

    def window(self, t0: float, t1: float) -> dict:
        lags = [l for t, l in self.samples if t0 <= t < t1]
        if not lags:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "p50_ms": round(float(np.percentile(lags, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(lags, 99)) * 1000, 2),
            "max_ms": round(max(lags) * 1000, 2),
        }


def emit(obj: dict) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(args: argparse.Namespace) -> None:
    clip = load_clip(args.width, args.height)
    body = json.loads(args.body) if args.body else None
    peers = [
        BenchPeer(
            args.url, clip, probe=(args.probe and i == 0), audio_only=args.audio_only,
            connect_timeout=args.connect_timeout, http_timeout=args.connect_timeout,
        )
        for i in range(args.peers)
    ]
    for peer in peers:
        peer.error = None
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.run())

    async def connect(i: int, peer: BenchPeer) -> str:
        await asyncio.sleep(i * args.stagger)
        return await peer.bench_connect(body)

    outcomes = await asyncio.gather(*(connect(i, p) for i, p in enumerate(peers)))
    emit(
        {
            "event": "ready",
            "name": args.name,
            "pid": os.getpid(),
            "connected": outcomes.count("ok"),
            "refused": outcomes.count("refused"),
            "failed": outcomes.count("failed"),
            "errors": [p.error for p in peers if p.error][:5],
        }
    )
    live = [p for p, o in zip(peers, outcomes) if o == "ok"]

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    t0 = t1 = None
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            command = line.decode().strip()
            if command == "video":
                deadline = time.monotonic() + args.video_timeout
                while time.monotonic() < deadline and not all(p.echo_arrivals for p in live):
                    await asyncio.sleep(0.05)
                emit({"event": "video", "name": args.name, "with_video": sum(bool(p.echo_arrivals) for p in live), "connected": len(live)})
            elif command == "start":
                t0 = time.monotonic()
                emit({"event": "started", "name": args.name})
            elif command == "stop":
                t1 = time.monotonic()
                emit(
                    {
                        "event": "result",
                        "name": args.name,
                        "window_s": t1 - t0,
                        "peers": [p.window(t0, t1) for p in live],
                        "loop_lag": lag.window(t0, t1),
                        "still_connected": sum(1 for p in live if p.pc is not None and p.pc.connectionState == "connected"),
                    }
                )
            elif command == "quit":
                break
    finally:
        lag_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 15)
        emit({"event": "closed", "name": args.name})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--probe", action="store_true", help="the first peer is the probe (decodes and measures)")
    parser.add_argument("--audio-only", action="store_true", help="voice peers: send and expect audio only")
    parser.add_argument("--body", default="", help="request_data of the offer, JSON")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between the peers' connection starts")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--video-timeout", type=float, default=20.0)
    parser.add_argument("--name", default="client")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.uvloop:
        import uvloop

        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
