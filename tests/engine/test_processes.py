"""Supervising child processes, with real ones: restart delays, crash loops, and stopping one that will not stop."""

import asyncio
import signal
import sys
import time

import pytest

from engine import processes
from engine.processes import ProcessSlot, stop_process


async def python(code: str) -> asyncio.subprocess.Process:
    """A Python child process running ``code``, its standard input and output piped to the test."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def crashed() -> asyncio.subprocess.Process:
    """A child process that has exited with code 3."""
    process = await python("import sys; sys.exit(3)")
    await process.wait()
    return process


@pytest.fixture
def short_delays(monkeypatch):
    """Restart delays of 10, 20, then at most 30 ms."""
    monkeypatch.setattr(processes, "RESTART_DELAY_FIRST_S", 0.01)
    monkeypatch.setattr(processes, "RESTART_DELAY_MAX_S", 0.03)


async def test_a_slot_tells_when_its_process_has_exited():
    slot = ProcessSlot("worker-0")
    assert not slot.exited()
    running = slot.process = await python("import sys; sys.stdin.read()")
    assert not slot.exited()
    running.kill()
    await running.wait()
    slot.process = await crashed()
    assert slot.exited()
    slot.given_up = True
    assert not slot.exited()


async def test_restart_delays_double_up_to_the_maximum(short_delays):
    slot = ProcessSlot("worker-0", started_at=time.monotonic())
    delays = []
    for _ in range(3):
        slot.process = await crashed()
        assert await slot.wait_to_restart("worker")
        assert slot.process is None
        delays.append(slot.delay)
    assert delays == [0.02, 0.03, 0.03]


async def test_a_process_that_ran_long_enough_starts_the_delays_over(short_delays):
    slot = ProcessSlot("worker-0", delay=0.03, started_at=time.monotonic() - processes.STABLE_AFTER_S - 1)
    slot.process = await crashed()
    assert await slot.wait_to_restart("worker")
    assert slot.delay == 0.02


async def test_a_crash_looping_slot_is_given_up(short_delays, monkeypatch):
    monkeypatch.setattr(processes, "CRASH_LOOP_RESTARTS", 2)
    slot = ProcessSlot("worker-0", started_at=time.monotonic())
    for _ in range(2):
        slot.process = await crashed()
        assert await slot.wait_to_restart("worker")
    slot.process = await crashed()
    assert not await slot.wait_to_restart("worker")
    assert slot.given_up and not slot.exited()
    assert slot.process.returncode == 3


async def test_stop_waits_for_a_process_that_stops_by_itself():
    process = await python("import time; time.sleep(0.1)")
    await stop_process(process, grace_s=10)
    assert process.returncode == 0


async def test_stop_terminates_a_process_past_its_grace():
    process = await python("import sys; sys.stdin.read()")
    await stop_process(process, grace_s=0.1)
    assert process.returncode == -signal.SIGTERM


async def test_stop_kills_a_process_that_ignores_termination():
    process = await python(
        "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); sys.stdin.read()"
    )
    assert await process.stdout.readline() == b"ready\n"
    await stop_process(process, grace_s=0.1)
    assert process.returncode == -signal.SIGKILL
