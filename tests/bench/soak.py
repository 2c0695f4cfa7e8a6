"""Soak benchmark of issue 10: does a host left running keep memory for sessions that ended?

One command:

    python -m tests.bench.soak --cycles 200 --peers 2 --seconds 3

It starts the real host (``smallwebrtc-host serve --workers W``, the echo bot
``tests/bench/echo_bot.py`` at 320x240, on 127.0.0.1) and runs N cycles: M
aiortc peers (:class:`tests.support.client.TestPeer`) connect, get echoed
video for S seconds and leave; the next cycle starts once the host reports no
session left. After ``--report-after`` cycles (10), and at the end, it prints,
per host process: RSS, open fds, threads, and the live session objects the
process reports when sent SIGUSR1 (each engine and worker logs
``live objects in ...: Session=0 ...``, after a garbage collection), and its
RSS again after that collection. The figures to compare are the first
report's and the last's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from tests.bench import procstat
from tests.support.client import TestPeer
from tests.support.host import HostProcess

REQUEST = {"video_width": 320, "video_height": 240}


def role(host: HostProcess, pid: int) -> str:
    """What a process of the host's tree is."""
    command = procstat.cmdline(pid)
    if pid == host.process.pid:
        return "main"
    return "worker" if " -m workers" in command else "engine" if "engine" in command else "other"


def fds(pid: int) -> int:
    """Open file descriptors of a process."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def report(host: HostProcess, cycles: int, sessions: int) -> tuple[dict[int, float], dict[int, float]]:
    """Print the host's processes' RSS, fds, threads and live objects; return RSS by pid, before and after the collection."""
    pids = procstat.tree(host.process.pid)
    roles = {pid: role(host, pid) for pid in pids}
    answering = [pid for pid in pids if roles[pid] in ("worker", "engine") or (roles[pid] == "main" and "serve" in procstat.cmdline(pid))]
    # Measured before the processes answer SIGUSR1: answering runs a full garbage collection.
    rss = {pid: procstat.memory(pid)["rss_mb"] for pid in pids}
    figures = {pid: f"fds {fds(pid):4}  threads {procstat.threads(pid):3}" for pid in pids}
    objects = host.live_objects(answering)
    collected = {pid: procstat.memory(pid)["rss_mb"] for pid in pids}
    print(f"after {cycles} cycles ({sessions} sessions); rss before/after the collection; objects live/kept:", flush=True)
    for pid in pids:
        print(
            f"  {roles[pid]:6} {pid:>7}  rss {rss[pid]:7.1f} / {collected[pid]:7.1f} MB  {figures[pid]}  {objects.get(pid, '')}",
            flush=True,
        )
    return rss, collected


async def cycle(url: str, peers: int, seconds: float) -> int:
    """One cycle: ``peers`` peers connect, get echoed video for ``seconds``, and leave; returns how many connected."""
    clients = [TestPeer(url) for _ in range(peers)]
    results = await asyncio.gather(*(c.connect(REQUEST) for c in clients), return_exceptions=True)
    connected = [c for c, r in zip(clients, results) if r is None]
    for client, result in zip(clients, results):
        if result is not None:
            print(f"  a peer did not connect: {type(result).__name__}: {result}", file=sys.stderr, flush=True)
    try:
        await asyncio.gather(*(c.wait_for_video_frames(1) for c in connected))
        await asyncio.sleep(seconds)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return len(connected)


async def until_no_sessions(host: HostProcess, timeout: float = 30.0) -> None:
    """Wait until every worker reports no session (the peers' sessions ended in the host)."""
    await asyncio.to_thread(host.wait_for, lambda workers: all(not w["sessions"] for w in workers), timeout)


async def soak(args: argparse.Namespace) -> None:
    host = HostProcess(args.workers, "--bot", "tests.bench.echo_bot:bot")
    host.start(timeout=60)
    print(f"host {host.base_url} (log {host._log.name})", flush=True)
    sessions = 0
    try:
        first = last = None
        for n in range(1, args.cycles + 1):
            sessions += await cycle(host.base_url, args.peers, args.seconds)
            await until_no_sessions(host)
            if n == args.report_after:
                first = report(host, n, sessions)
        last = report(host, args.cycles, sessions)
        if first:
            (before_first, after_first), (before_last, after_last) = first, last
            print("RSS growth since the first report (before / after the collection):", flush=True)
            for pid in before_last:
                if pid in before_first:
                    growth = f"{before_last[pid] - before_first[pid]:+7.1f} / {after_last[pid] - after_first[pid]:+7.1f} MB"
                    print(f"  {role(host, pid):6} {pid:>7}  {growth}", flush=True)
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--peers", type=int, default=2, help="peers per cycle")
    parser.add_argument("--seconds", type=float, default=3.0, help="echo time per cycle")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-after", type=int, default=10, help="cycles before the first report")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
