"""``python -m workers`` (``smallwebrtc-host worker``) as a process: its options, its refusals, joining an engine."""

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.common.protocol import (
    AppMessageOut,
    SessionClose,
    SessionOpen,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
)
from tests.support.link import ipc_endpoint
from tests.support.workers import HOARD_BLOCK_BYTES, HOARD_BLOCKS, FakeEngine

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "smallwebrtc-host"
TIMEOUT_S = 60
GREETER = "tests.support.workers:greeter"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command run to its end from the repository's root, its output as text."""
    return subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "workers", *args]


def test_help_lists_the_workers_options():
    done = run(*worker_command("--help"))
    assert done.returncode == 0, done.stderr
    assert "smallwebrtc-host worker" in done.stdout
    for option in ("--engine", "--bot", "--worker-id", "--config", "--curve-secret-key", "--curve-server-key"):
        assert option in done.stdout


def test_the_host_commands_worker_hands_over_to_the_worker_program():
    done = run(str(SCRIPT), "worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: smallwebrtc-host worker" in done.stdout
    assert "--engine" in done.stdout and "--curve-server-key" in done.stdout


def test_an_invalid_setting_exits_non_zero_naming_it(tmp_path):
    done = run(*worker_command("--engine", ipc_endpoint(tmp_path)), env={"SMALLWEBRTC_HOST_WORKER_CAPACITY": "0"})
    assert done.returncode != 0
    assert "invalid configuration" in done.stderr and "worker_capacity" in done.stderr


def test_a_worker_whose_engine_is_already_gone_exits(tmp_path):
    # Its parent is this test, not the pid it was told: as if its engine had died before it started.
    done = run(*worker_command("--engine", ipc_endpoint(tmp_path), "--parent-pid", "1"))
    assert done.returncode != 0
    assert "(pid 1) is gone" in done.stderr


def test_a_missing_config_file_exits_non_zero_naming_it(tmp_path):
    missing = tmp_path / "nowhere.toml"
    done = run(*worker_command("--engine", ipc_endpoint(tmp_path), "--config", str(missing)))
    assert done.returncode != 0
    assert str(missing) in done.stderr


@pytest.mark.parametrize(
    "bot, named", [("mybot:not-a-name", "bot 'mybot:not-a-name'"), ("no-such-bot.py", "bot file no-such-bot.py")]
)
def test_a_malformed_or_missing_bot_exits_non_zero_naming_it(tmp_path, bot, named):
    done = run(*worker_command("--engine", ipc_endpoint(tmp_path), "--bot", bot))
    assert done.returncode != 0
    assert "smallwebrtc-host worker: invalid configuration" in done.stderr and named in done.stderr


def test_tcp_without_curve_keys_exits_non_zero_naming_them():
    done = run(*worker_command("--engine", "tcp://127.0.0.1:9"))
    assert done.returncode != 0
    assert "curve_secret_key_file" in done.stderr


def test_without_an_engine_it_says_engine_is_required():
    done = run(*worker_command())
    assert done.returncode == 2
    assert "--engine" in done.stderr


def rss_mb(pid: int) -> float:
    """A process's resident memory."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@contextlib.asynccontextmanager
async def worker_process(tmp_path, worker_id: str, bot: str = GREETER):
    """A fake engine, and ``python -m workers`` joining it with a bot (killed at the end if still running)."""
    engine = FakeEngine(ipc_endpoint(tmp_path))
    process = await asyncio.create_subprocess_exec(
        *worker_command("--engine", engine.endpoint, "--worker-id", worker_id, "--bot", bot),
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield engine, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        engine.close()


async def test_the_worker_process_joins_runs_a_bot_and_exits_on_worker_stop(tmp_path):
    async with worker_process(tmp_path, "proc-1") as (engine, process):
        identity, register = await engine.expect(WorkerRegister, timeout=TIMEOUT_S)
        assert (identity, register.worker_id, register.pid) == (b"proc-1", "proc-1", process.pid)
        await engine.send(identity, SessionOpen("pc-1", "runner-1"))
        _, said = await engine.expect(AppMessageOut, timeout=TIMEOUT_S)
        assert json.loads(said.json)["pid"] == process.pid
        await engine.send(identity, WorkerStop("test over"))
        assert await asyncio.wait_for(process.wait(), TIMEOUT_S) == 0


async def test_the_worker_process_exits_cleanly_on_sigterm_when_idle(tmp_path):
    async with worker_process(tmp_path, "proc-2") as (engine, process):
        await engine.expect(WorkerRegister, timeout=TIMEOUT_S)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT_S) == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="other allocators give pages back on their own")
async def test_the_worker_process_gives_an_ended_sessions_memory_back(tmp_path):
    hoard_mb = HOARD_BLOCKS * HOARD_BLOCK_BYTES / 2**20
    async with worker_process(tmp_path, "proc-3", "tests.support.workers:hoarder") as (engine, process):
        identity, _ = await engine.expect(WorkerRegister, timeout=TIMEOUT_S)
        await engine.send(identity, SessionOpen("pc-1", "runner-1"))
        await engine.expect(AppMessageOut, timeout=TIMEOUT_S)
        holding = rss_mb(process.pid)
        await engine.send(identity, SessionClose("pc-1", "peer left"))
        await engine.expect(WorkerHeartbeat, session_ids=(), timeout=TIMEOUT_S)
        # The bot's buffers were in a reference cycle, between blocks still in use: without a
        # collection and a trim of the heap they would stay.
        given_back = False
        for _ in range(50):
            given_back = rss_mb(process.pid) < holding - hoard_mb * 0.8
            if given_back:
                break
            await asyncio.sleep(0.1)
        assert given_back, f"{holding:.0f} MB during the session, {rss_mb(process.pid):.0f} MB after"
