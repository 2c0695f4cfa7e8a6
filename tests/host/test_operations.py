"""``smallwebrtc-host``: draining on SIGTERM, stopping at once on the second, invalid settings."""

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.client import TestPeer
from tests.support.host import REPO, HostProcess, process_alive


async def offer_status(url: str, sdp: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/offer", json={"sdp": sdp, "type": "offer"}) as r:
            return r.status


async def test_sigterm_drains_then_exits_when_the_last_session_ends():
    with HostProcess(1) as host:
        async with TestPeer(host.base_url) as peer:
            await peer.connect()
            host.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert host.process.poll() is None
            assert await offer_status(host.base_url, peer.pc.localDescription.sdp) == 503
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{host.base_url}/readyz") as r:
                    assert r.status == 503 and (await r.json())["reason"] == "draining"
            # The running session is not disturbed.
            await peer.wait_for_video_frames(10)
        assert host.process.wait(15) == 0
        assert "draining" in host.log()


async def test_the_drain_timeout_ends_the_last_sessions():
    with HostProcess(1, env={"SMALLWEBRTC_HOST_DRAIN_TIMEOUT_S": "1"}) as host:
        async with TestPeer(host.base_url) as peer:
            await peer.connect()
            host.process.send_signal(signal.SIGTERM)
            await peer.wait_for_signalling("peerLeft", timeout=10)
        assert host.process.wait(15) == 0


async def test_a_second_sigterm_stops_at_once():
    with HostProcess(1) as host:
        async with TestPeer(host.base_url) as peer:
            await peer.connect()
            host.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            host.process.send_signal(signal.SIGTERM)
            await peer.wait_for_signalling("peerLeft", timeout=10)
        assert host.process.wait(15) == 0


def test_an_invalid_setting_stops_startup_naming_it():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--port", "99999"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "port" in result.stderr and "invalid configuration" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--ice-host-addresses", "203.0.113.9", "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "ice_host_addresses" in result.stderr


async def test_a_worker_drains_on_sigterm():
    with HostProcess(0) as host:
        endpoint = next(line.split("listening for workers on ")[1].strip() for line in host.log().splitlines() if "listening for workers on" in line)
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker", "--engine", endpoint, "--worker-id", "joiner"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            host.wait_for(lambda ws: [w["worker_id"] for w in ws] == ["joiner"], timeout=30)
            async with TestPeer(host.base_url) as peer:
                await peer.connect()
                # Its bot starts once the peer connects: the worker drains only with a session to finish.
                host.wait_for(lambda ws: ws and ws[0]["reported_sessions"], timeout=10)
                worker.send_signal(signal.SIGTERM)
                host.wait_for(lambda ws: ws and ws[0]["draining"], timeout=10)
                # The only worker drains: no room for a new session, the running one goes on.
                assert await offer_status(host.base_url, peer.pc.localDescription.sdp) == 503
                await peer.wait_for_video_frames(10)
            assert worker.wait(20) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_an_engine_killed_takes_its_workers_and_the_next_start_removes_its_socket_directory():
    with HostProcess(2) as host:
        worker_pids = list(host.worker_pids().values())
        endpoint = next(
            line.split("listening for workers on ")[1].strip()
            for line in host.log().splitlines()
            if "listening for workers on" in line
        )
        host.process.send_signal(signal.SIGKILL)
        host.process.wait()
        # Before, they stayed until they found the engine silent (10 s); now the kernel ends them with it.
        deadline = time.monotonic() + 5
        while any(process_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in worker_pids if process_alive(pid)]
    runtime_dir = Path(endpoint.removeprefix("ipc://")).parent
    assert runtime_dir.is_dir()  # nothing could remove it: the engine died at once
    with HostProcess(1):
        assert not runtime_dir.exists()
