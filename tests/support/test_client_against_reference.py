"""Proves TestPeer against the reference server (Pipecat's own SmallWebRTCTransport echo bot).

The reference server runs as a subprocess on a free 127.0.0.1 port and is
stopped (SIGTERM, then SIGKILL) whatever the outcome.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.ice import restrict_host_addresses  # noqa: E402
from tests.support.client import (  # noqa: E402
    SAMPLE_RATE,
    TestPeer,
    bar_colours,
    bars_match,
    dominant_frequency,
)

SERVER_START_TIMEOUT = 40.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/status", timeout=1.0) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory):
    """Base URL of a running reference server."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("reference") / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.reference_server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while _status(base_url) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"reference server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"reference server not answering after {SERVER_START_TIMEOUT} s")
            time.sleep(0.2)
        yield base_url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # Shown by pytest only when something failed.
        print(f"--- reference server log (tail) ---\n{log_path.read_text(errors='replace')[-4000:]}")


@pytest.fixture(autouse=True)
def loopback_only():
    """aiortc peers of this process gather host candidates on 127.0.0.1 only."""
    restrict_host_addresses(["127.0.0.1"])


async def _assert_no_tasks_left():
    await asyncio.sleep(0.1)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not left, f"tasks left after close(): {left}"


async def test_echo_against_reference(reference_server):
    peer = TestPeer(reference_server)
    try:
        await peer.connect(request_data={"test": "echo"})
        assert peer.pc_id

        # App message round trip (Pipecat drops messages without a "type" key).
        await peer.send_app_message({"type": "test-echo", "n": 1})
        reply = await peer.wait_for_message(lambda m: m["echo"]["n"] == 1)
        assert reply == {"echo": {"type": "test-echo", "n": 1}}

        # Video: the bars come back, not mirrored.
        frames = await peer.wait_for_video_frames(15)
        rgb = frames[-1][1]
        assert rgb.shape == (240, 320, 3)
        assert bars_match(rgb, mirrored=False), bar_colours(rgb)
        assert not bars_match(rgb, mirrored=True)

        # Audio: the 440 Hz tone comes back.
        audio = await peer.wait_for_audio(1.5)
        frequency = dominant_frequency(audio, SAMPLE_RATE)
        assert abs(frequency - 440.0) <= 5.0, (frequency, peer.audio_formats)
        assert peer.errors == []
    finally:
        await peer.close()
    await peer.close()  # idempotent
    assert peer.pc.connectionState == "closed"
    await _assert_no_tasks_left()


async def test_start_flow_against_reference(reference_server):
    peer = TestPeer(reference_server, use_start=True, tone_hz=1000.0)
    try:
        await peer.connect(request_data={"test": "start"})
        assert peer.session_id
        await peer.send_app_message({"type": "test-start"})
        await peer.wait_for_message(lambda m: m["echo"]["type"] == "test-start")
        status, body = await peer.patch_candidates(peer.local_candidates())
        assert (status, body) == (200, {"status": "success"})
        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, SAMPLE_RATE) - 1000.0) <= 5.0
    finally:
        await peer.close()
    await _assert_no_tasks_left()
