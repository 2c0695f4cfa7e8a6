"""The local workers of one engine, run for real: they join, a dead one is lost at once and restarted, a crash loop is given up."""

import contextlib
import os
import signal

import pytest
import zmq.auth

from engine import processes
from engine.local_workers import LocalWorkers
from engine.sessions import Engine
from tests.support.engines import curve_keys, engine_settings
from tests.support.link import private_endpoint, until


@pytest.fixture
def short_restart_delay(monkeypatch):
    # Longer than the engine's 0.5 s look at its workers' processes, so the engine sees the
    # old process exit before the new one registers under the same id (which it would also
    # take as the old one lost, for another reason).
    monkeypatch.setattr(processes, "RESTART_DELAY_FIRST_S", 1.5)


@contextlib.asynccontextmanager
async def engine_with_local_workers(count: int, config_file: str | None = None, **overrides):
    """An engine and ``count`` local workers, stopped in the order ``serve`` stops them.

    Args:
        count: Local workers.
        config_file: The configuration file the workers read.
        **overrides: Host settings (by default the workers join on a private ipc endpoint).
    """
    with private_endpoint() as endpoint:
        engine = Engine(engine_settings(endpoint, workers=count, **overrides))
        await engine.start()
        workers = LocalWorkers(engine, engine.settings, config_file)
        try:
            await workers.start()
            yield engine, workers
        finally:
            await engine.stop()
            await workers.stop()


async def test_the_workers_join_their_engine_and_leave_with_it():
    async with engine_with_local_workers(2) as (engine, workers):
        assert len(workers) == 2
        joined = await until(lambda: len(list(engine.registry)) == 2 and list(engine.registry), timeout=30)
        assert sorted(w.worker_id for w in joined) == [f"{engine.engine_id}-w0", f"{engine.engine_id}-w1"]
        pids = [w.pid for w in joined]
    # The engine told them to stop: they left on their own.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_over_tcp_the_workers_join_with_a_key_the_engine_made_for_them(tmp_path, monkeypatch):
    # The operator authorized no worker key; the configuration the workers share with the engine
    # names the engine's own secret key, which is not theirs to use.
    curve, _ = curve_keys(tmp_path)
    monkeypatch.setenv("SMALLWEBRTC_HOST_CURVE_SECRET_KEY_FILE", curve["curve_secret_key_file"])
    async with engine_with_local_workers(2, engine_endpoint="tcp://127.0.0.1:*", **curve) as (engine, _):
        joined = await until(lambda: len(list(engine.registry)) == 2 and list(engine.registry), timeout=30)
        local_public_key, _ = zmq.auth.load_certificate(engine.local_access.curve_secret_key_file)
        assert {worker.key for worker in joined} == {local_public_key.decode()}
        assert engine.local_access.endpoint == engine.endpoint and engine.endpoint.startswith("tcp://127.0.0.1:")


async def test_a_worker_that_dies_is_lost_at_once_and_restarted_under_its_id(short_restart_delay, log_messages):
    async with engine_with_local_workers(1) as (engine, _):
        worker_id = f"{engine.engine_id}-w0"
        first = await until(lambda: engine.registry.get(worker_id), timeout=30)
        os.kill(first.pid, signal.SIGKILL)
        again = await until(lambda: (w := engine.registry.get(worker_id)) and w.pid != first.pid and w, timeout=30)
        assert again.worker_id == worker_id
    assert any(f"worker {worker_id} lost: process exited with code -9" in m for m in log_messages), log_messages


async def test_a_worker_that_keeps_crashing_is_given_up(short_restart_delay, monkeypatch, log_messages):
    monkeypatch.setattr(processes, "CRASH_LOOP_RESTARTS", 1)
    # A worker asked to read a file that is not there exits at once.
    async with engine_with_local_workers(1, config_file="/nonexistent/host.toml"):
        await until(lambda: any("crash-looping" in m for m in log_messages), timeout=30)
    assert sum("restarting it in" in m for m in log_messages) == 1
