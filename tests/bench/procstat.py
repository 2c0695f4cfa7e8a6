"""CPU time and memory of process trees, from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state(3) ppid(4) ... utime(14) stime(15), here 0-based from field 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def parent(pid: int) -> int | None:
    """The parent pid."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (not ``pid`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = parent(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    return [pid, *descendants(pid)]


def memory(pid: int) -> dict[str, float]:
    """RSS now and its peak (VmHWM), in MiB."""
    out = {"rss_mb": 0.0, "peak_rss_mb": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def threads(pid: int) -> int:
    """Threads of a process."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def cmdline(pid: int) -> str:
    """The command line, space-separated."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


@dataclass
class Snapshot:
    """CPU seconds of a set of processes at one moment."""

    cpu: dict[int, float]

    @classmethod
    def take(cls, pids: list[int]) -> "Snapshot":
        return cls({pid: cpu_seconds(pid) or 0.0 for pid in pids})

    def delta(self, later: "Snapshot") -> dict[int, float]:
        """CPU seconds each process used between the two snapshots (only processes in both)."""
        return {pid: later.cpu[pid] - self.cpu[pid] for pid in self.cpu if pid in later.cpu}


def machine() -> dict:
    """What the figures were measured on."""
    info: dict = {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0))}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        pass
    try:
        info["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
    except (FileNotFoundError, ValueError):
        pass
    return info


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (all CPUs, idle and iowait excluded) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each live thread of a process, by thread id."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def python_thread_names(pid: int) -> dict[int, str]:
    """Thread id to Python thread name, from ``py-spy dump`` (empty if py-spy is not installed).

    Threads Python does not know (ZeroMQ's I/O threads, libvpx's) are not listed.
    """
    import re
    import shutil
    import subprocess
    import sys

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return {}
    try:
        text = subprocess.run(
            [py_spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', text, re.M)}


def thread_group(name: str | None) -> str:
    """A thread's part in an aiortc server, from its Python name."""
    if name is None:
        return "native (zmq I/O, codec threads)"
    if name == "MainThread":
        return "event loop (MainThread)"
    if name.endswith("-decoder"):
        return "aiortc decoders"
    if name.startswith(("uvloop_", "asyncio_", "ThreadPoolExecutor")):
        return "executor (aiortc encoders)"
    if name.startswith("Thread-") or "Garbage" in name:
        return "other Python threads (zmq gc)"
    return "other Python threads"
