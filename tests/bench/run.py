"""Benchmark of issue 6: this host against the reference server, under N real A/V client peers.

One command:

    python -m tests.bench.run --peers 1,2,4 --seconds 20

For each peer count it runs this host (``smallwebrtc-host serve --workers W
--ice-host-addresses 127.0.0.1`` running the reference's echo bot with this
host's transport, ``tests/bench/echo_bot.py``, asked for 640x480) and the
reference server (``tests/bench/reference_server.py --width 640 --height 480``,
Pipecat's own SmallWebRTCTransport and the same echo), one after the other,
each freshly started, with the same load: N aiortc client peers in separate
load-generator processes (:mod:`tests.bench.loadgen`) replaying pre-encoded
VP8 640x480@30 (~0.8 Mbit/s) and Opus packets, one of them the probe.

Per run it prints/records: peers connected, refused offers, received video
fps (median and minimum over the peers, worst 1-second bin of any peer),
audio frames/s, echo latency p50/p95 (probe), time to first echoed video, CPU
seconds per session-second of the server's whole process tree (split engine /
workers for the host) from /proc utime+stime before/after the window, RSS per
process, and the client's own CPU and loop lag (run conditions). Then the
host/reference ratios. Before that, the IPC micro-benchmark
(:mod:`tests.bench.ipc_bench`) unless ``--skip-ipc``.

JSON lines go to ``tests/bench/results/bench-<time>.jsonl`` (``--out``).

Profiling the engine: ``python -m tests.bench.run --servers host --peers 2 --profile``
records the engine with py-spy (``pip install py-spy``) during the window, GIL
holder only, and prints its top functions; those runs' CPU figures include
py-spy's sampling. With py-spy installed every run also splits each server
process's CPU by thread (event loop, aiortc decoders, encoder executor, native
threads) from /proc/<pid>/task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from tests.bench import procstat
from tests.bench.media import load_clip
from tests.support.host import HostProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BODY = {"video_width": 640, "video_height": 480}
AUDIO_ONLY_BODY = {"video": False}
# What "full quality" means for every peer of a run (issue 12): median and worst-second video
# frame rate, audio frames per second, and the probe's echo latency.
FULL_QUALITY = {"fps_median": 29.0, "fps_worst_second": 25, "audio_fps": 49.5, "latency_p95_ms": 300.0}
# A run during which other work on the machine kept more cores than this busy is flagged "noisy".
NOISY_FOREIGN_CORES = 0.25


# --------------------------------------------------------------------- servers


class Server:
    """A server under test: its URL, its process tree, how to stop it."""

    kind: str
    url: str
    root_pid: int
    log_path: str

    def roles(self) -> dict[int, str]:
        """Each live process of the server's tree and its role."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class HostServer(Server):
    kind = "host"

    def __init__(
        self,
        workers: int,
        cpus: str | None,
        env: dict | None = None,
        bot: str = "tests.bench.echo_bot:bot",
        checkout: Path | None = None,
    ):
        # Another checkout (the baseline) runs from its own directory with its own venv's Python.
        where = {} if checkout is None else {"program": (str(checkout / ".venv/bin/python"), "-m", "engine.cli"), "cwd": checkout}
        self._host = HostProcess(workers, "--bot", bot, env=env, **where)
        self._host.start(timeout=60)
        self.url = self._host.base_url
        self.root_pid = self._host.process.pid
        self.log_path = self._host._log.name
        self.workers = workers
        _pin(self.root_pid, cpus)

    def roles(self) -> dict[int, str]:
        out = {self.root_pid: "engine"}
        for pid in procstat.descendants(self.root_pid):
            out[pid] = "worker" if " -m workers " in procstat.cmdline(pid) else "other"
        return out

    def stop(self) -> None:
        self._host.stop()


class ReferenceServer(Server):
    kind = "reference"

    def __init__(self, width: int, height: int, cpus: str | None, audio_only: bool = False, timeout: float = 60.0):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="reference-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.reference_server", "--host", "127.0.0.1", "--port", str(port),
             "--width", str(width), "--height", str(height), *(["--audio-only"] if audio_only else [])],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.root_pid = self.process.pid
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"reference server exited with {self.process.returncode}: {Path(self.log_path).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("reference server did not answer /status")
            time.sleep(0.2)
        _pin(self.root_pid, cpus)

    def roles(self) -> dict[int, str]:
        out = {self.root_pid: "server"}
        for pid in procstat.descendants(self.root_pid):
            out[pid] = "other"
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _env_pairs(pairs: list[str] | None) -> dict:
    """``["KEY=VALUE", ...]`` as a dict."""
    return dict(pair.split("=", 1) for pair in pairs or [])


def _renice(pid: int, nice: int) -> None:
    """Give every thread of a process tree this nice value (Linux nice is per thread; new threads inherit it)."""
    if not nice:
        return
    for p in procstat.tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except (ProcessLookupError, PermissionError):
                pass


def _pin(pid: int, cpus: str | None) -> None:
    """Pin a process tree (every thread) to ``cpus`` with taskset, if asked."""
    if not cpus:
        return
    for p in procstat.tree(pid):
        subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(p)], check=False, capture_output=True)


# --------------------------------------------------------------------- clients


class Client:
    """One load-generator process, driven by JSON lines."""

    def __init__(self, name: str, url: str, peers: int, probe: bool, args: argparse.Namespace, log_dir: Path):
        self.name = name
        self.peers = peers
        command = [
            sys.executable, "-m", "tests.bench.loadgen", "--url", url, "--peers", str(peers),
            "--body", json.dumps(AUDIO_ONLY_BODY if args.media == "audio" else BODY), "--name", name,
            "--stagger", str(args.stagger), "--width", "640", "--height", "480",
        ]
        if args.media == "audio":
            command.append("--audio-only")
        if probe:
            command.append("--probe")
        if args.client_cpus:
            command = ["taskset", "-c", args.client_cpus, *command]
        if args.nice:
            command = ["nice", "-n", str(args.nice), *command]
        self.stderr_path = log_dir / f"{name}.log"
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("wb"), text=True, bufsize=1,
        )
        self.pid = self.process.pid
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass
        self._lines.put(None)

    def send(self, command: str) -> None:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout:.0f} s (log: {self.stderr_path})")
            try:
                item = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                raise RuntimeError(f"{self.name} exited ({self.process.poll()}); log: {self.stderr_path}")
            if item.get("event") == event:
                return item

    def finish(self) -> None:
        self.send("quit")
        try:
            self.expect("closed", 25)
        except (TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _split(peers: int, per_process: int) -> list[int]:
    processes = max(1, -(-peers // per_process))
    return [peers // processes + (1 if i < peers % processes else 0) for i in range(processes)]


# --------------------------------------------------------------------- one run


def run_one(kind: str, peers: int, args: argparse.Namespace, log_dir: Path) -> dict:
    """Start the server, load it with ``peers`` peers, measure, stop everything; the run's record."""
    quiet = wait_quiet(args.quiet_cores, args.quiet_wait)
    conditions = {**procstat.machine(), "busy_cores_before_start": quiet}
    started = time.monotonic()
    if kind == "reference":
        server: Server = ReferenceServer(640, 480, args.server_cpus, audio_only=args.media == "audio")
    else:
        checkout = Path(args.baseline).resolve() if kind == "baseline" else None
        # Room on the workers for every peer: a refused peer would be a session not measured.
        capacity = {"SMALLWEBRTC_HOST_WORKER_CAPACITY": str(max(4, -(-peers // args.workers)))}
        server = HostServer(args.workers, args.server_cpus, {**capacity, **_env_pairs(args.host_env)}, args.host_bot, checkout)
    _renice(server.root_pid, args.nice)
    server_start_s = time.monotonic() - started
    clients: list[Client] = []
    profiles: list[dict] = []
    record: dict = {"bench": args.media, "server": kind, "peers": peers, "seconds": args.seconds, "warmup": args.warmup}
    if kind != "reference":
        record["workers"] = args.workers
        record["host_bot"] = args.host_bot
        record["host_env"] = _env_pairs(args.host_env)
    try:
        sizes = _split(peers, args.peers_per_client)
        clients = [
            Client(f"{kind}-{peers}-client{i}", server.url, n, i == 0, args, log_dir) for i, n in enumerate(sizes)
        ]
        connect_budget = 60 + peers * args.stagger
        ready = [c.expect("ready", connect_budget) for c in clients]
        connected = sum(r["connected"] for r in ready)
        record.update(
            connected=connected,
            refused=sum(r["refused"] for r in ready),
            failed=sum(r["failed"] for r in ready),
            connect_errors=[e for r in ready for e in r["errors"]][:5],
        )
        for c in clients:
            c.send("video")
        video = [c.expect("video", 40) for c in clients]
        record["peers_with_video_before_window"] = sum(v["with_video"] for v in video)
        time.sleep(args.warmup)

        roles = server.roles()
        client_pids = [c.pid for c in clients]
        before = procstat.Snapshot.take([*roles, *client_pids])
        threads_before = {pid: procstat.thread_cpu_seconds(pid) for pid in roles}
        busy_before = procstat.machine_busy_seconds()
        if args.profile and kind != "reference":
            targets = [(pid, role) for pid, role in roles.items() if role == "engine" or (args.profile_workers and role == "worker")]
            profiles = [_start_profile(pid, role, args.seconds, log_dir, args.native) for pid, role in targets]
        for c in clients:
            c.send("start")
        for c in clients:
            c.expect("started", 10)
        t0 = time.monotonic()
        time.sleep(args.seconds)
        after = procstat.Snapshot.take([*roles, *client_pids])
        threads_after = {pid: procstat.thread_cpu_seconds(pid) for pid in roles}
        busy = procstat.machine_busy_seconds() - busy_before
        window = time.monotonic() - t0
        for c in clients:
            c.send("stop")
        results = [c.expect("result", 30) for c in clients]
        memory = {pid: procstat.memory(pid) for pid in roles}
        thread_names = {pid: procstat.python_thread_names(pid) for pid in roles}
        thread_counts = {pid: procstat.threads(pid) for pid in roles}

        cpu = before.delta(after)
        sessions = max(connected, 1)
        per_peer = [p for r in results for p in r["peers"]]
        probe = next((p for p in per_peer if p.get("probe")), None)
        fps = [p["video_fps"] for p in per_peer]
        audio_fps = [p["audio_fps"] for p in per_peer]
        first_video = [p["first_video_s"] for p in per_peer if p["first_video_s"] is not None]
        latencies = probe["latencies_ms"] if probe else []
        by_role: Counter = Counter()
        for pid, role in roles.items():
            by_role[role] += cpu.get(pid, 0.0)
        server_cpu = sum(cpu.get(pid, 0.0) for pid in roles)
        client_cpu = sum(cpu.get(pid, 0.0) for pid in client_pids)
        record.update(
            window_s=round(window, 2),
            still_connected=sum(r["still_connected"] for r in results),
            video_fps_median=_r(np.median(fps)) if fps else 0.0,
            video_fps_min=_r(min(fps)) if fps else 0.0,
            video_worst_1s_bin=min((p["video_worst_bin"] for p in per_peer), default=0),
            audio_fps_median=_r(np.median(audio_fps)) if audio_fps else 0.0,
            audio_fps_min=_r(min(audio_fps)) if audio_fps else 0.0,
            latency_p50_ms=_r(np.percentile(latencies, 50)) if latencies else None,
            latency_p95_ms=_r(np.percentile(latencies, 95)) if latencies else None,
            latency_samples=len(latencies),
            probe_unreadable_frames=probe["unreadable_frames"] if probe else None,
            audio_nonsilent_ratio=_r(probe["audio_nonsilent_ratio"], 3) if probe else None,
            audio_rms_median=_r(probe["audio_rms_median"], 4) if probe else None,
            first_echo_s=_r(probe["first_echo_s"], 3) if probe and probe["first_echo_s"] is not None else None,
            first_video_s_median=_r(np.median(first_video), 3) if first_video else None,
            first_video_s_max=_r(max(first_video), 3) if first_video else None,
            connect_s_median=_r(np.median([p["connect_s"] for p in per_peer if p["connect_s"] is not None]), 3) if per_peer else None,
            keyframes_requested=sum(p["keyframes_requested"] for p in per_peer),
            renegotiations=sum(p["renegotiations"] for p in per_peer),
            client_errors=[e for p in per_peer for e in p["errors"]][:5],
            cpu_s=_r(server_cpu, 3),
            cpu_per_session=_r(server_cpu / window / sessions, 4),
            cpu_per_session_by_role={role: _r(v / window / sessions, 4) for role, v in sorted(by_role.items())},
            cpu_share_of_one_core=_r(server_cpu / window, 3),
            # Per video frame the peers got back: comparable even when a server falls behind
            # (a server that drops frames also spends less per session-second).
            cpu_ms_per_echoed_frame=_r(server_cpu * 1000 / max(1, sum(p["video_fps"] * window for p in per_peer)), 2),
            processes=[
                {
                    "pid": pid, "role": role, "cpu_s": _r(cpu.get(pid, 0.0), 3),
                    "cpu_per_session": _r(cpu.get(pid, 0.0) / window / sessions, 4),
                    "threads": thread_counts[pid], **{k: _r(v, 1) for k, v in memory[pid].items()},
                    "cpu_per_session_by_thread_group": _thread_groups(
                        threads_before[pid], threads_after[pid], thread_names[pid], window * sessions
                    ),
                }
                for pid, role in sorted(roles.items(), key=lambda item: (item[1] != "engine", item[0]))
            ],
            rss_mb_total=_r(sum(m["rss_mb"] for m in memory.values()), 1),
            client={
                "processes": len(clients),
                "cpu_share_of_one_core": _r(client_cpu / window, 3),
                "loop_lag": [r["loop_lag"] for r in results],
            },
            conditions={
                **conditions,
                "server_cpus": args.server_cpus or "any",
                "client_cpus": args.client_cpus or "any",
                "nice": args.nice,
                "loadavg_1m_end": procstat.machine().get("loadavg_1m"),
                # Busy cores of the whole machine in the window, and what neither the
                # server nor the load generators used (other work on the machine).
                "machine_busy_cores": _r(busy / window, 3),
                "foreign_busy_cores": _r(max(0.0, busy - server_cpu - client_cpu) / window, 3),
            },
            server_start_s=_r(server_start_s, 1),
            noisy=bool(busy / window - server_cpu / window - client_cpu / window > NOISY_FOREIGN_CORES),
        )
        if profiles:
            record["profiles"] = [_finish_profile(profile, args.top) for profile in profiles]
        return record
    finally:
        for profile in profiles:
            if profile["process"].poll() is None:
                profile["process"].kill()
        for c in clients:
            c.finish()
        stopping = time.monotonic()
        server.stop()
        record["server_stop_s"] = _r(time.monotonic() - stopping, 1)
        record["server_log"] = server.log_path
        record["run_s"] = _r(time.monotonic() - started, 1)


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the machine is busy on less than ``threshold`` cores; the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        before = procstat.machine_busy_seconds()
        time.sleep(1.0)
        busy = procstat.machine_busy_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            return round(busy, 2)


def _thread_groups(before: dict, after: dict, names: dict, divisor: float) -> dict:
    """CPU per session-second of a process's threads, grouped by their part (see procstat.thread_group)."""
    groups: Counter = Counter()
    if not names:
        return {"all threads (no thread names: py-spy missing or its dump failed)": _r(sum(after[t] - before.get(t, 0.0) for t in after) / divisor, 4)}
    for tid, cpu in after.items():
        groups[procstat.thread_group(names.get(tid))] += cpu - before.get(tid, 0.0)
    return {group: _r(v / divisor, 4) for group, v in groups.most_common()}


def _r(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------- profiling


def _start_profile(pid: int, role: str, seconds: float, log_dir: Path, native: bool) -> dict:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = log_dir / f"{role}-{pid}.pyspy.txt"
    command = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", str(out), "--threads"]
    # Default: only the thread holding the GIL is sampled (--gil), without pausing the engine
    # (--nonblocking): where the Python time goes. Idle waits (uvloop's poll, executor and
    # decoder queues) hold no GIL and drop out; codec work inside PyAV releases it and shows
    # in the per-thread /proc figures instead. --native: every thread with native frames
    # (py-spy then pauses the engine at each sample and counts idle polls as active).
    command += ["--native"] if native else ["--gil", "--nonblocking"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(log_dir / "py-spy.log").open("wb"))
    return {"process": process, "out": out, "role": role, "pid": pid}


def _finish_profile(profile: dict, top: int) -> dict:
    try:
        profile["process"].wait(30)
    except subprocess.TimeoutExpired:
        profile["process"].kill()
    return {"role": profile["role"], "pid": profile["pid"], **summarize_collapsed(profile["out"], top)}


def summarize_collapsed(path: Path, top: int = 25) -> dict:
    """Self and inclusive share of each function, and each thread group's share, in py-spy's raw output.

    Shares are of all samples (with ``--gil``: of the time some thread held the GIL).
    ``main_self`` is the same as ``self`` for the event loop thread alone.
    """
    own: Counter = Counter()
    main_own: Counter = Counter()
    inclusive: Counter = Counter()
    groups: Counter = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        name = None
        # --threads puts "thread (<tid>): <name>" (and maybe the process) first.
        while frames and (frames[0].startswith("process ") or frames[0].startswith("thread ")):
            head = frames.pop(0)
            if head.startswith("thread "):
                name = head.split(": ", 1)[1] if ": " in head else None
        if not frames:
            continue
        total += n
        groups[procstat.thread_group(name)] += n
        own[frames[-1]] += n
        if name == "MainThread":
            main_own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    pct = lambda c: round(100.0 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "file": str(path),
        "thread_groups": [{"group": g, "pct": pct(c)} for g, c in groups.most_common()],
        "self": [{"function": f, "pct": pct(c)} for f, c in own.most_common(top)],
        "main_self": [{"function": f, "pct": pct(c)} for f, c in main_own.most_common(top)],
        "inclusive": [{"function": f, "pct": pct(c)} for f, c in inclusive.most_common(top)],
    }


# --------------------------------------------------------------------- report


def code_fingerprint() -> dict:
    """A hash of the code under test (engine/, workers/, transport/): results name what they measured."""
    out = {}
    for package in ("engine", "workers", "transport"):
        digest = hashlib.sha1()
        for path in sorted((ROOT / package).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
        out[package] = digest.hexdigest()[:12]
    return out


def print_table(records: list[dict], media: str = "av") -> None:
    av = [r for r in records if r.get("bench") == media and "error" not in r]
    if av:
        print()
        header = (
            f"{'peers':>5} {'server':<9} {'conn':>4} {'ref':>3} {'fps med/min/worst1s':>20} {'aud/s':>6} "
            f"{'lat p50/p95 ms':>15} {'1st echo s':>10} {'CPU/sess':>9} {'engine':>7} {'workers':>7} "
            f"{'cli/oth':>8} {'RSS MB (per process)':<28}"
        )
        print(header)
        print("-" * len(header))
        for r in av:
            roles = r["cpu_per_session_by_role"]
            rss = "+".join(f"{p['rss_mb']:.0f}" for p in r["processes"])
            lat = f"{_fmt(r['latency_p50_ms'], 0)}/{_fmt(r['latency_p95_ms'], 0)}"
            print(
                f"{r['peers']:>4}{'*' if r.get('noisy') else ' '} {r['server']:<9} {r['connected']:>4} {r['refused']:>3} "
                f"{r['video_fps_median']:>7.1f}/{r['video_fps_min']:>5.1f}/{r['video_worst_1s_bin']:>4} "
                f"{r['audio_fps_median']:>6.1f} {lat:>15} {_fmt(r['first_echo_s'], 2):>10} "
                f"{r['cpu_per_session']:>9.3f} {_fmt(roles.get('engine'), 3):>7} {_fmt(roles.get('worker'), 3):>7} "
                f"{r['client']['cpu_share_of_one_core']:>4.2f}/{r['conditions']['foreign_busy_cores']:<4.2f} "
                f"{rss} = {r['rss_mb_total']:.0f}"
            )
        print("CPU/sess: CPU-seconds per session-second, whole server process tree (1.0 = one core per session);")
        print("engine/workers: the same split by process; cli/oth: cores used in the window by the load generators /")
        print("by anything else on the machine (run conditions); fps worst1s: fewest frames any peer got in a 1 s bin.")
        print(f"*: noisy run, other work kept more than {NOISY_FOREIGN_CORES} cores busy during the window.")
        print("CPU ms per echoed video frame (server tree): " + ", ".join(
            f"{r['peers']} {r['server']} {r['cpu_ms_per_echoed_frame']:.1f}" for r in av))
    if av:
        print("\nCPU per session-second by thread group (from /proc/<pid>/task, thread names from py-spy dump)")
        for r in av:
            for p in r["processes"]:
                groups = ", ".join(f"{g} {v:.3f}" for g, v in p.get("cpu_per_session_by_thread_group", {}).items() if v >= 0.001)
                print(f"{r['peers']:>3} {r['server']:<9} {p['role']:<7} pid {p['pid']:<7} {p['cpu_per_session']:.3f}: {groups}")
    for against in ("reference", "baseline"):
        print_ratios(compute_ratios(av, "host", against), media)
    capacity = {r["server"]: r["sessions_at_full_quality"] for r in records if r.get("bench") == "capacity"}
    if capacity:
        print("\nsessions at full quality (" + ", ".join(f"{k} {v}" for k, v in FULL_QUALITY.items()) + "): "
              + ", ".join(f"{server} {n}" for server, n in capacity.items()))
        if capacity.get("reference"):
            print(f"host / reference: {capacity.get('host', 0) / capacity['reference']:.2f}  (target >= 1.5)")
    for server in ("host", "baseline", "reference"):
        runs = sorted((r for r in av if r["server"] == server), key=lambda r: r["peers"])
        steps = [
            f"{a['peers']}->{b['peers']}: {(b['rss_mb_total'] - a['rss_mb_total']) / (b['peers'] - a['peers']):.0f}"
            for a, b in zip(runs, runs[1:])
        ]
        if steps:
            print(f"RSS MB per added session, {server}: " + ", ".join(steps) + ("  (target <= 30)" if server == "host" else ""))
    for r in records:
        if r.get("bench") == media and "error" in r:
            print(f"{r['server']} with {r['peers']} peers: FAILED: {r['error']}")
        for profile in r.get("profiles", []):
            print_profile(r, profile)


def print_ratios(ratios: list[dict], media: str) -> None:
    if not ratios:
        return
    against = ratios[0]["against"]
    print(f"\nhost / {against}")
    part = "ref" if against == "reference" else "base"
    header = (
        f"{'peers':>5} {'fps med':>8} {'lat p50':>8} {'lat p95':>8} {'CPU total':>10} {'engine/' + part:>11} "
        f"{'workers/' + part:>12} {'RSS total':>10} {'CPU/frame':>10}"
    )
    print(header)
    print("-" * len(header))
    for q in ratios:
        print(
            f"{q['peers']:>4}{'*' if q['noisy'] else ' '} {_fmt(q['fps_median'], 2):>8} {_fmt(q['latency_p50'], 2):>8} {_fmt(q['latency_p95'], 2):>8} "
            f"{_fmt(q['cpu_per_session_total'], 2):>10} {_fmt(q['cpu_per_session_engine'], 2):>11} "
            f"{_fmt(q['cpu_per_session_workers'], 2):>12} {_fmt(q['rss_total'], 2):>10} {_fmt(q['cpu_per_echoed_frame'], 2):>10}"
        )
    if against == "reference" and media == "av":
        print("targets (issue 12): engine <= 0.04 CPU per A/V session; sessions at full quality on one core >= 1.5x the reference's")
    elif against == "reference":
        print("targets (issue 12): CPU total <= 0.60 per voice-bot session; engine <= 0.012 CPU per voice session")


def print_profile(r: dict, p: dict) -> None:
    print(f"\n{p['role']} {p['pid']} profile ({r['server']}, {r['peers']} peers): {p['samples']} samples; {p['file']}")
    print("thread groups: " + ", ".join(f"{t['group']} {t['pct']}%" for t in p["thread_groups"]))
    print(f"{'self %':>7}  function")
    for item in p["self"]:
        print(f"{item['pct']:>7}  {item['function']}")
    print(f"{'incl %':>7}  function")
    for item in p["inclusive"]:
        print(f"{item['pct']:>7}  {item['function']}")


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def compute_ratios(av: list[dict], server: str = "host", against: str = "reference") -> list[dict]:
    """``server``'s figures over ``against``'s, per peer count both ran."""
    out = []
    for peers in sorted({r["peers"] for r in av}):
        host = next((r for r in av if r["peers"] == peers and r["server"] == server), None)
        ref = next((r for r in av if r["peers"] == peers and r["server"] == against), None)
        if not host or not ref:
            continue

        def ratio(a, b):
            return None if a is None or not b else round(a / b, 3)

        ref_engine = ref["cpu_per_session_by_role"].get("engine")
        out.append(
            {
                "bench": "ratio",
                "server": server,
                "against": against,
                "peers": peers,
                "fps_median": ratio(host["video_fps_median"], ref["video_fps_median"]),
                "latency_p50": ratio(host["latency_p50_ms"], ref["latency_p50_ms"]),
                "latency_p95": ratio(host["latency_p95_ms"], ref["latency_p95_ms"]),
                "cpu_per_session_total": ratio(host["cpu_per_session"], ref["cpu_per_session"]),
                # Against another host, engine to engine and workers to workers; against the reference, to its total.
                "cpu_per_session_engine": ratio(host["cpu_per_session_by_role"].get("engine"), ref_engine or ref["cpu_per_session"]),
                "cpu_per_session_workers": ratio(
                    host["cpu_per_session_by_role"].get("worker"), ref["cpu_per_session_by_role"].get("worker") or ref["cpu_per_session"]
                ),
                "rss_total": ratio(host["rss_mb_total"], ref["rss_mb_total"]),
                "cpu_per_echoed_frame": ratio(host["cpu_ms_per_echoed_frame"], ref["cpu_ms_per_echoed_frame"]),
                "noisy": bool(host.get("noisy") or ref.get("noisy")),
            }
        )
    return out


def full_quality(record: dict, media: str) -> bool:
    """Whether every peer of a run got its media at full quality (issue 12's bar)."""
    if "error" in record or record["connected"] < record["peers"] or record["still_connected"] < record["peers"]:
        return False
    audio_ok = record["audio_fps_median"] is not None and record["audio_fps_median"] >= FULL_QUALITY["audio_fps"]
    if media == "audio":
        return audio_ok
    latency = record["latency_p95_ms"]
    return (
        audio_ok
        and record["video_fps_median"] >= FULL_QUALITY["fps_median"]
        and record["video_worst_1s_bin"] >= FULL_QUALITY["fps_worst_second"]
        and latency is not None
        and latency <= FULL_QUALITY["latency_p95_ms"]
    )


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--peers", default="1,2,4", help="comma-separated peer counts (default 1,2,4)")
    parser.add_argument("--media", choices=("av", "audio"), default="av", help="A/V echo sessions, or voice-bot sessions (audio only)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per run (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds between every peer having video and the window (default 5)")
    parser.add_argument("--servers", default="host,reference", help="which servers, in order (default host,reference; baseline: see --baseline)")
    parser.add_argument("--baseline", help="another checkout of this host (with its own .venv), run as server 'baseline': before/after in one run")
    parser.add_argument(
        "--search", action="store_true",
        help="per server, add peers from the first --peers count until a run is not at full quality; report the most that were",
    )
    parser.add_argument("--search-max", type=int, default=12, help="with --search: the most peers tried (default 12)")
    parser.add_argument("--workers", type=int, default=2, help="the host's --workers (default 2)")
    parser.add_argument(
        "--host-bot", default="tests.bench.echo_bot:bot",
        help="the host's bot (default: the reference's echo with this host's transport; workers.demo_bot:bot for the demo)",
    )
    parser.add_argument("--peers-per-client", type=int, default=4, help="peers per load-generator process (default 4)")
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between peer connection starts (default 0.3)")
    parser.add_argument("--server-cpus", help="taskset CPU list for the server's processes (default: not pinned)")
    parser.add_argument("--client-cpus", help="taskset CPU list for the load generators (default: not pinned)")
    parser.add_argument("--quiet-cores", type=float, default=0.5, help="before each run, wait until the machine is busy on fewer cores than this (default 0.5)")
    parser.add_argument("--quiet-wait", type=float, default=5.0, help="longest wait for that, seconds (default 5)")
    parser.add_argument("--retry-noisy", type=int, default=0, help="run a noisy run again, up to this many times (default 0)")
    parser.add_argument("--host-env", action="append", metavar="KEY=VALUE", help="environment for the host's processes (repeatable), for A/B runs")
    parser.add_argument("--nice", type=int, default=0, help="nice value for servers and load generators, e.g. -10 (root) to shield them from other work on the machine (default 0)")
    parser.add_argument("--skip-ipc", action="store_true", help="skip the IPC micro-benchmark")
    parser.add_argument("--ipc-seconds", type=float, default=3.0, help="IPC throughput phase per kind (default 3)")
    parser.add_argument("--profile", action="store_true", help="py-spy the engine during host windows (figures then include py-spy)")
    parser.add_argument("--profile-workers", action="store_true", help="with --profile: the workers too")
    parser.add_argument("--native", action="store_true", help="with --profile: native frames too (pauses the engine while sampling)")
    parser.add_argument("--top", type=int, default=25, help="with --profile: functions listed")
    parser.add_argument("--out", help="JSON lines file (default tests/bench/results/bench-<time>.jsonl)")
    args = parser.parse_args(argv)

    if args.nice:
        # Everything started from here (IPC benchmark, servers, load generators) inherits it.
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    peer_counts = [int(x) for x in args.peers.split(",") if x.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ("host", "reference", "baseline"):
            parser.error(f"unknown server {s!r}")
    if "baseline" in servers and not args.baseline:
        parser.error("server 'baseline' needs --baseline DIR")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"bench-{stamp}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS_DIR / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []

    def emit(record: dict) -> None:
        records.append(record)
        line = json.dumps(record)
        with out_path.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    import aiortc
    import av
    import pipecat

    emit(
        {
            "bench": "meta",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:],
            "code": code_fingerprint(),
            "versions": {"python": sys.version.split()[0], "aiortc": aiortc.__version__, "av": av.__version__,
                         "pipecat": getattr(pipecat, "__version__", "?")},
            "machine": procstat.machine(),
            "clip": {k: v for k, v in load_clip(640, 480).params.items()},
        }
    )
    clip = load_clip(640, 480)
    print(f"clip: {len(clip.video)} VP8 frames 640x480@30 ({clip.video_kbps:.0f} kbit/s), {len(clip.audio)} Opus packets", flush=True)

    if not args.skip_ipc:
        from tests.bench import ipc_bench

        for direct in (False, True):
            for result in ipc_bench.run(seconds=args.ipc_seconds, direct=direct):
                emit({"bench": "ipc", **result})

    def measure(kind: str, peers: int) -> dict:
        print(f"--- {kind}, {peers} peers", flush=True)
        for attempt in range(args.retry_noisy + 1):
            try:
                record = run_one(kind, peers, args, log_dir)
            except Exception as e:  # a failed run is a result too
                record = {"bench": args.media, "server": kind, "peers": peers, "error": f"{type(e).__name__}: {e}"}
            if not record.get("noisy") or attempt == args.retry_noisy:
                emit(record)
                return record
            print(f"noisy run (other work used {record['conditions']['foreign_busy_cores']} cores); again", flush=True)
            record["bench"] = f"{args.media}-noisy-discarded"
            emit(record)
        raise AssertionError("unreachable")

    if args.search:
        for kind in servers:
            most = 0
            for peers in range(peer_counts[0], args.search_max + 1):
                if not full_quality(measure(kind, peers), args.media):
                    break
                most = peers
            emit({"bench": "capacity", "media": args.media, "server": kind, "sessions_at_full_quality": most,
                  "full_quality": FULL_QUALITY, "server_cpus": args.server_cpus})
    else:
        for peers in peer_counts:
            for kind in servers:
                measure(kind, peers)

    runs = [r for r in records if r.get("bench") == args.media and "error" not in r]
    for against in ("reference", "baseline"):
        for ratio in compute_ratios(runs, "host", against):
            emit(ratio)
    ipc = [r for r in records if r.get("bench") == "ipc"]
    if ipc:
        print("\nIPC hop (engine -> worker -> engine, ipc://, real processes)")
        print(f"{'path':<7} {'kind':<6} {'rtt p50 us':>10} {'rtt p99 us':>10} {'msgs/s (w=8)':>13} {'MB/s in':>8} {'CPU us/rt eng':>14} {'CPU us/rt wkr':>14}")
        for r in ipc:
            print(
                f"{r['path']:<7} {r['kind']:<6} {r['rtt_p50_us']:>10.0f} {r['rtt_p99_us']:>10.0f} {r['throughput_msgs_s']:>13.0f} "
                f"{r['throughput_MBps_in']:>8.0f} {r['cpu_us_per_roundtrip_engine']:>14.0f} {r['cpu_us_per_roundtrip_worker']:>14.0f}"
            )
    print_table(records, args.media)
    print(f"\nresults: {out_path}\nlogs: {log_dir}")


if __name__ == "__main__":
    main()
