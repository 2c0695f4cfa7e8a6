"""Runs the real multiprocess host (``smallwebrtc-host serve``) for a test, on 127.0.0.1, and asks its demo bot about itself."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from tests.support.client import TestPeer

REPO = Path(__file__).resolve().parents[2]
# A small picture for the demo bot, so tests that do not measure video spend little on it.
SMALL_VIDEO = {"video_width": 320, "video_height": 240}
# What an engine or a worker logs when sent SIGUSR1 (engine.common.diagnostics).
LIVE_OBJECTS = re.compile(r"live objects in (?:engine|worker) (\d+): (.*)$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0, token: str = ""):
    """GET a JSON document (with a bearer token, if given)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.load(response)


async def request(method: str, url: str, **kwargs) -> tuple[int, object]:
    """One HTTP request (aiohttp's arguments): its status and its body, as JSON when it is JSON."""
    status, _, body = await request_with_headers(method, url, **kwargs)
    return status, body


async def request_with_headers(method: str, url: str, **kwargs) -> tuple[int, dict[str, str], object]:
    """``request``, with the response's headers too."""
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = await response.text()
        return response.status, dict(response.headers), body


class HostProcess:
    """``smallwebrtc-host serve`` in a subprocess, confined to loopback.

    Start it with ``start()`` (waits until every worker has joined), read its
    log with ``log()``, stop it with ``stop()`` (SIGTERM, then SIGKILL).
    """

    def __init__(
        self,
        workers: int = 2,
        *extra_args: str,
        env: dict | None = None,
        program: Sequence[str] = (sys.executable, "-m", "engine.cli"),
        cwd: Path = REPO,
    ):
        """Prepare the host.

        Args:
            workers: Local workers to start.
            *extra_args: More ``serve`` flags.
            env: Extra environment variables.
            program: How to run ``smallwebrtc-host`` (e.g. an installed console script).
            cwd: The directory it runs from.
        """
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self._args = [
            *program, "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), "--ice-host-addresses", "127.0.0.1",
            *extra_args,
        ]
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self._log = tempfile.NamedTemporaryFile(prefix="host-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "HostProcess":
        """Start the host and wait until its workers have joined."""
        self.process = subprocess.Popen(
            self._args, cwd=self.cwd, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"host exited with {self.process.returncode}:\n{self.log()}")
            try:
                if len(self.workers_status()) >= self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"host not ready within {timeout} s:\n{self.log()}")

    def workers_status(self) -> list[dict]:
        """``GET /workers``: the live workers."""
        return self._workers_document()["workers"]

    def owns(self, minted_id: str) -> bool:
        """Whether one of this host's engines minted a pc_id or /start session id (the engine's id starts them)."""
        document = self._workers_document()
        engine_ids = document.get("engines") or [document["engine_id"]]
        return any(minted_id.startswith(engine_id + "-") for engine_id in engine_ids)

    def _workers_document(self) -> dict:
        # With an admin token, /workers is the operator's.
        return get_json(f"{self.base_url}/workers", token=self._env.get("SMALLWEBRTC_HOST_ADMIN_TOKEN", ""))

    def worker_pids(self) -> dict[str, int]:
        """Worker id to process id."""
        return {w["worker_id"]: w["pid"] for w in self.workers_status()}

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.1):
        """Poll ``predicate(workers_status())`` until it returns something true."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.workers_status()
            result = predicate(last)
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"condition not met within {timeout} s; workers: {last}")

    def live_objects(self, pids: list[int], timeout: float = 10.0) -> dict[int, str]:
        """Each process's answer to SIGUSR1: ``Name=live/kept ...`` (engines and workers answer; send no other pid)."""
        before = len(self.log())
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        found: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
            for line in self.log()[before:].splitlines():
                if match := LIVE_OBJECTS.search(line):
                    found[int(match.group(1))] = match.group(2).strip()
        return found

    def log(self) -> str:
        """Everything the host printed so far."""
        return Path(self._log.name).read_text(errors="replace")

    def stop(self, drain_s: float = 2.0, timeout: float = 15.0) -> int:
        """SIGTERM the host (it drains); after ``drain_s`` SIGTERM again (it stops at once); SIGKILL if it hangs."""
        if self.process is None:
            return 0
        for signum, wait in ((signal.SIGTERM, drain_s), (signal.SIGTERM, timeout)):
            if self.process.poll() is not None:
                break
            self.process.send_signal(signum)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "HostProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


async def host_info(peer: TestPeer) -> dict:
    """The demo bot's RTVI ``host-info`` message, asked for with ``client-ready``."""
    await peer.send_app_message({"label": "rtvi-ai", "id": "ready-1", "type": "client-ready", "data": {"version": "2.2.0"}})
    message = await peer.wait_for_message(
        lambda m: m.get("type") == "server-message" and m["data"].get("type") == "host-info"
    )
    return message["data"]


def terminate(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM a process and wait up to ``grace_s`` for it to exit; then SIGKILL it."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
