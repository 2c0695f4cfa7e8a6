"""First echoed video (issue 12): how long from a peer's connect to the first picture its bot sends back.

One command, this host against another checkout of it (before and after, in one run):

    python -m tests.bench.first_video --peers 10 --baseline ../other-checkout

For each server (this tree, then the baseline: its own ``.venv``, run from its
directory) it starts ``smallwebrtc-host serve --workers 1`` on 127.0.0.1 with
the bot given (the demo bot by default, which captures the camera as soon as
it connects, as most Pipecat video bots do), then connects ``--peers`` peers
one after another. Each is a :class:`tests.support.client.TestPeer` that
sends its camera (colour bars) from the moment it connects, as a browser does.
Per peer it takes, from the start of ``connect()`` (the offer): when the peer
connection and data channel were up, and when the first echoed video frame
was decoded. It prints the median and the 90th percentile of both and of the
difference (first video after connecting), per server, and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np

from tests.support.client import TestPeer
from tests.support.host import HostProcess


async def first_video(base_url: str) -> tuple[float, float]:
    """Seconds from the offer to connected, and to the first echoed video frame, for one new peer."""
    async with TestPeer(base_url) as peer:
        started = time.monotonic()
        await peer.connect()
        connected = time.monotonic()
        await peer.wait_for_video_frames(1)
        first_frame_at = peer.received_video[0][0]
        return connected - started, first_frame_at - started


def measure(name: str, host: HostProcess, peers: int) -> dict:
    """Connect ``peers`` peers in turn to a started host; the figures."""
    connect_s, video_s = [], []
    for _ in range(peers):
        # Each peer finds the worker as the first did: the last one's session over.
        host.wait_for(lambda workers: all(not w["sessions"] for w in workers), timeout=30)
        connected, video = asyncio.run(first_video(host.base_url))
        connect_s.append(connected)
        video_s.append(video)
    after = np.subtract(video_s, connect_s)
    figures = {"server": name, "peers": peers}
    for label, values in (("connect", connect_s), ("first_video", video_s), ("first_video_after_connect", after)):
        figures[f"{label}_ms_p50"] = round(float(np.median(values)) * 1000, 1)
        figures[f"{label}_ms_p90"] = round(float(np.percentile(values, 90)) * 1000, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10, help="peers per server, one after another (default 10)")
    parser.add_argument("--bot", default="workers.demo_bot:bot", help="the hosts' bot (default: the demo bot)")
    parser.add_argument("--baseline", help="another checkout of this host, with its own .venv, measured after this one")
    args = parser.parse_args()

    servers = [("host", {})]
    if args.baseline:
        checkout = Path(args.baseline).resolve()
        servers.append(("baseline", {"program": (str(checkout / ".venv/bin/python"), "-m", "engine.cli"), "cwd": checkout}))
    results = []
    for name, where in servers:
        with HostProcess(1, "--bot", args.bot, **where) as host:
            asyncio.run(first_video(host.base_url))  # the worker's first session pays its imports: not counted
            results.append(measure(name, host, args.peers))
        print(results[-1], flush=True)
    print(f"\n{'server':<9} {'connect p50/p90 ms':>19} {'first video p50/p90 ms':>23} {'after connect p50/p90 ms':>25}")
    for r in results:
        print(
            f"{r['server']:<9} {r['connect_ms_p50']:>9.0f}/{r['connect_ms_p90']:<9.0f} "
            f"{r['first_video_ms_p50']:>11.0f}/{r['first_video_ms_p90']:<11.0f} "
            f"{r['first_video_after_connect_ms_p50']:>12.0f}/{r['first_video_after_connect_ms_p90']:<12.0f}"
        )
    if len(results) == 2:
        host, base = results
        print(
            "host / baseline: first video p50 "
            f"{host['first_video_ms_p50'] / base['first_video_ms_p50']:.2f}, after connect p50 "
            f"{host['first_video_after_connect_ms_p50'] / base['first_video_after_connect_ms_p50']:.2f}"
            "  (target: first video within 300 ms of connecting)"
        )


if __name__ == "__main__":
    main()
