"""Worker memory benchmark of issue 12: an idle worker, and what each added session costs.

One command:

    python -m tests.bench.worker_memory --bots echo,demo --sessions 1,2,4

For each bot it starts the real host (``smallwebrtc-host serve --workers 1`` on
127.0.0.1, ``--bot`` the bench echo bot ``tests/bench/echo_bot.py`` or the demo
bot ``workers/demo_bot.py``) and reads its one worker's memory from
``/proc/<pid>/smaps_rollup``: idle (``--settle`` seconds after it joined),
then with 1, 2, 4 sessions of real aiortc peers (:class:`tests.bench.loadgen.BenchPeer`:
pre-encoded VP8 640x480@30 and Opus, ``--voice`` for audio only) once every
peer gets its echo back and ``--settle`` seconds have passed, and once the
peers have left and the worker reports no session.

Per line: RSS; PSS (RSS with each shared page divided among the processes
mapping it); USS (private pages: what the worker alone holds, what stopping it
gives back); anonymous memory (heap, Python objects, thread stacks: never
shared between workers, as they are started, not forked); threads; the
worker's CPU (cores) and minor page faults per second over the last
``--settle`` seconds. Then per
added session, the growth of each figure from the previous line divided by the
sessions added. With one worker its libraries' pages are private (RSS = USS);
with W workers of one host their file-backed pages (``Private_Clean`` here) are
shared, so a worker's PSS is about anonymous + file-backed / W.

``--workers W`` starts W workers instead and prints each idle worker's
figures only (no sessions): what a worker costs in a host of W.

``--breakdown`` also prints the idle worker's resident memory by mapping:
each library's shared objects (file-backed, shared between workers), and the
anonymous memory (heap, Python objects).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import defaultdict
from pathlib import Path

from tests.bench import procstat
from tests.bench.loadgen import BenchPeer
from tests.bench.media import load_clip
from tests.support.host import HostProcess

BOTS = {"echo": "tests.bench.echo_bot:bot", "demo": "workers.demo_bot:bot"}
FIGURES = ("rss", "pss", "uss", "anon", "file")


def worker_memory(pid: int) -> dict[str, float]:
    """RSS, PSS, USS, anonymous and file-backed private memory of a process in MiB, and its threads."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) / 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
        "anon": fields["Anonymous"],
        "file": fields["Rss"] - fields["Anonymous"],
        "threads": procstat.threads(pid),
    }


def minor_faults(pid: int) -> int:
    """Page faults a process took without I/O, from /proc (each page of memory mapped afresh costs one)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[7])


def _mapping_owner(path: str) -> str:
    """Who a mapping belongs to: a package under site-packages, Python's own, or the kind of anonymous memory."""
    if not path or path.startswith("[anon"):
        return "anonymous (Python objects, malloc, stacks)"
    if path.startswith("["):
        return path
    if match := re.search(r"site-packages/([^/]+)", path):
        package = match.group(1).removesuffix(".libs")
        return f"site-packages/{package}"
    if "python3" in path or "libpython" in path:
        return "python (interpreter, lib-dynload)"
    return Path(path).name


def breakdown(pid: int) -> list[tuple[str, float, float]]:
    """Resident MiB by owner of the mappings (see ``_mapping_owner``), with the anonymous part of each; largest first."""
    rss: dict[str, float] = defaultdict(float)
    anon: dict[str, float] = defaultdict(float)
    owner = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            owner = _mapping_owner(parts[5] if len(parts) > 5 else "")
        elif parts[0] == "Rss:":
            rss[owner] += int(parts[1]) / 1024
        elif parts[0] == "Anonymous:":
            anon[owner] += int(parts[1]) / 1024
    return sorted(((o, rss[o], anon[o]) for o in rss if rss[o] >= 0.05), key=lambda row: -row[1])


def print_row(bot: str, label: str, sessions: int, now: dict, before: dict | None, added: int) -> None:
    figures = "  ".join(f"{now[f]:7.1f}" for f in FIGURES)
    cpu = f"{now['cpu']:5.2f} {now['faults']:7.0f}" if "cpu" in now else "    -       -"
    line = f"{bot:5} {label:>10} {sessions:3}  {figures}  {now['threads']:4}  {cpu}"
    if before is not None and added:
        line += "   " + "  ".join(f"{(now[f] - before[f]) / added:+6.1f}" for f in FIGURES)
    print(line, flush=True)


async def connect(peers: list[BenchPeer], body: dict) -> None:
    outcomes = await asyncio.gather(*(p.bench_connect(body) for p in peers))
    failed = [p.error for p, outcome in zip(peers, outcomes) if outcome != "ok"]
    if failed:
        raise RuntimeError(f"peers did not connect: {failed}")
    deadline = time.monotonic() + 30
    while not all(p.echo_arrivals for p in peers):
        if time.monotonic() > deadline:
            raise TimeoutError("no echo within 30 s")
        await asyncio.sleep(0.1)


async def measure_bot(name: str, args: argparse.Namespace) -> None:
    host = HostProcess(1, "--bot", BOTS[name], env=dict(pair.split("=", 1) for pair in args.env))
    host.start(timeout=60)
    try:
        (pid,) = host.worker_pids().values()
        await asyncio.sleep(args.settle)
        idle = worker_memory(pid)
        print_row(name, "idle", 0, idle, None, 0)
        if args.breakdown:
            print(f"  idle worker {pid} resident memory by mapping (MiB, of which anonymous):")
            for owner, rss, anon in breakdown(pid)[: args.breakdown]:
                print(f"    {rss:7.1f} {anon:7.1f}  {owner}")
        clip = load_clip(args.width, args.height)
        body = {"video": False} if args.voice else {"video_width": args.width, "video_height": args.height}
        peers: list[BenchPeer] = []
        before, previous = idle, 0
        try:
            for count in args.sessions:
                added = [BenchPeer(host.base_url, clip, audio_only=args.voice) for _ in range(count - previous)]
                for peer in added:
                    peer.error = None
                peers += added
                await connect(added, body)
                cpu_before, faults_before = procstat.cpu_seconds(pid), minor_faults(pid)
                await asyncio.sleep(args.settle)
                now = worker_memory(pid)
                now["cpu"] = (procstat.cpu_seconds(pid) - cpu_before) / args.settle
                now["faults"] = (minor_faults(pid) - faults_before) / args.settle
                print_row(name, "sessions", count, now, before, count - previous)
                before, previous = now, count
        finally:
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await asyncio.to_thread(host.wait_for, lambda workers: not workers[0]["sessions"], 30)
        await asyncio.sleep(args.settle)
        print_row(name, "ended", 0, worker_memory(pid), idle, 0)
        # Logged at DEBUG (--env SMALLWEBRTC_HOST_LOG_LEVEL=DEBUG): the full collection after each session.
        released = [float(ms) for ms in re.findall(r"memory released in ([\d.]+) ms", host.log())]
        if released:
            print(f"  collections after ended sessions: {len(released)}, {min(released):.1f}-{max(released):.1f} ms")
    finally:
        host.stop()


async def idle_workers(name: str, args: argparse.Namespace) -> None:
    """Each idle worker of a host with ``--workers`` of them: their libraries' pages are shared, PSS shows the share."""
    with HostProcess(args.workers, "--bot", BOTS[name], env=dict(pair.split("=", 1) for pair in args.env)) as host:
        await asyncio.sleep(args.settle)
        for pid in host.worker_pids().values():
            print_row(name, f"idle of {args.workers}", 0, worker_memory(pid), None, 0)


async def main_async(args: argparse.Namespace) -> None:
    media = "voice (Opus)" if args.voice else f"A/V (VP8 {args.width}x{args.height}@30, Opus)"
    env = f"; env {' '.join(args.env)}" if args.env else ""
    print(f"one worker, sessions {media}, settle {args.settle:g} s{env}; machine {procstat.machine()}")
    header = "  ".join(f"{f:>7}" for f in FIGURES)
    per_session = "  ".join(f"{f:>6}" for f in FIGURES)
    print(f"bot   {'state':>10} ses  {header}  thr  cores faults/s   per added session: {per_session}  (MiB)", flush=True)
    for name in args.bots:
        await (measure_bot(name, args) if args.workers == 1 else idle_workers(name, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bots", type=lambda s: s.split(","), default=["echo", "demo"], help=f"of {sorted(BOTS)}")
    parser.add_argument("--sessions", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each reading")
    parser.add_argument("--voice", action="store_true", help="audio-only peers and bots")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, default=1, help="more than 1: only each idle worker's figures")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the host and its worker (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--breakdown", type=int, default=0, metavar="N", help="print the idle worker's N largest mappings' owners")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
