"""A worker joined to a fake engine: registering, heartbeats, sessions, draining, stopping, and loading its bot.

The worker is real (``Worker.run()`` in the test's event loop, its own
ZeroMQ DEALER); the engine is a real ROUTER the test drives
(``tests.support.workers.FakeEngine``) on a private ipc:// socket.
"""

import asyncio
import json
import os
import signal
import socket
import sys

import pytest

from engine.common.protocol import (
    AppMessageOut,
    EngineHeartbeat,
    PeerStateChange,
    SessionClose,
    SessionOpen,
    WorkerAccept,
    WorkerDrain,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
    encode,
)
from engine.common.settings import HostSettings
from tests.support import bots
from tests.support.link import ipc_endpoint
from tests.support.workers import FakeEngine, greeter
from workers.worker import BOT_FILE_MODULE, LoadedBot, Worker, load_bot

WORKER_ID = "w1"
IDENTITY = WORKER_ID.encode()


def settings(**overrides) -> HostSettings:
    """Quick heartbeats; an engine silent for a minute before the worker gives up (unless overridden)."""
    values = {
        "bot": "tests.support.workers:greeter",
        "worker_capacity": 3,
        "heartbeat_interval_s": 0.1,
        "engine_silent_after_s": 60,
        "bot_end_grace_s": 1,
    }
    return HostSettings(**{**values, **overrides})


@pytest.fixture
async def engine(tmp_path):
    fake = FakeEngine(ipc_endpoint(tmp_path))
    yield fake
    fake.close()


@pytest.fixture
async def start_worker(engine):
    """Starts a worker's ``run()`` as a task; stops whatever is still running at the end."""
    tasks = []

    def start(**overrides) -> tuple[Worker, asyncio.Task]:
        worker = Worker(settings(**overrides), engine.endpoint, WORKER_ID)
        task = asyncio.create_task(worker.run())
        tasks.append(task)
        return worker, task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def joined(engine: FakeEngine, start_worker, **overrides) -> tuple[Worker, asyncio.Task]:
    """A worker that has registered with the engine."""
    worker, task = start_worker(**overrides)
    await engine.expect(WorkerRegister)
    await engine.send(IDENTITY, WorkerAccept("engine-1"))
    return worker, task


async def hello(engine: FakeEngine) -> dict:
    """What the next greeter bot to start says about itself."""
    _, message = await engine.expect(AppMessageOut)
    return {"pc_id": message.session_id, **json.loads(message.json)}


async def test_it_registers_first_with_its_capacity_then_beats(engine, start_worker):
    start_worker()
    identity, first, _ = await engine.recv()
    assert identity == IDENTITY
    assert first == WorkerRegister(WORKER_ID, os.getpid(), socket.gethostname(), 3)
    _, beat = await engine.expect(WorkerHeartbeat)
    assert (beat.session_ids, beat.frames_dropped, beat.draining) == ((), 0, False)
    assert beat.loop_lag_ms >= 0 and beat.cpu_share >= 0
    # Its resident memory, as the engine's memory limit reads it: this process's.
    with open(f"/proc/{os.getpid()}/status") as status:
        vm_rss_mb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    assert abs(beat.rss_mb - vm_rss_mb) < 50


async def test_session_open_runs_the_bot_with_the_sessions_arguments(engine, start_worker):
    await joined(engine, start_worker)
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1", {"n": 1}))
    said = await hello(engine)
    assert said == {
        "pc_id": "pc-1",
        "session_id": "runner-1",
        "worker_id": WORKER_ID,
        "body": {"n": 1},
        "pid": os.getpid(),
    }
    await engine.expect(WorkerHeartbeat, session_ids=("pc-1",))
    # The engine closes it: the bot ends, and the heartbeat lists it no more.
    await engine.send(IDENTITY, SessionClose("pc-1", "peer left"))
    await engine.expect(WorkerHeartbeat, session_ids=())


async def test_a_session_opened_twice_runs_one_bot(engine, start_worker):
    await joined(engine, start_worker)
    for session_id in ("pc-1", "pc-1", "pc-2"):
        await engine.send(IDENTITY, SessionOpen(session_id, f"runner-{session_id}"))
    assert [(await hello(engine))["pc_id"] for _ in range(2)] == ["pc-1", "pc-2"]
    await engine.expect(WorkerHeartbeat, session_ids=("pc-1", "pc-2"))


async def test_a_bot_that_returns_closes_its_session_with_the_engine(engine, start_worker):
    await joined(engine, start_worker)
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1", {"leave": True}))
    await hello(engine)
    _, close = await engine.expect(SessionClose)
    assert close == SessionClose("pc-1", "bot ended")
    await engine.expect(WorkerHeartbeat, session_ids=())


@pytest.mark.parametrize("asked_by", ["signal", "engine"])
async def test_while_draining_it_declines_new_sessions_and_leaves_after_the_last(engine, start_worker, asked_by):
    worker, task = await joined(engine, start_worker)
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1"))
    await hello(engine)
    if asked_by == "signal":
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the worker's loop: it drains
    else:
        await engine.send(IDENTITY, WorkerDrain("memory: 900 MB, past worker_memory_limit_mb = 800"))
    await engine.expect(WorkerHeartbeat, draining=True, session_ids=("pc-1",))
    await engine.send(IDENTITY, SessionOpen("pc-2", "runner-2"))
    _, declined = await engine.expect(SessionClose)
    assert declined == SessionClose("pc-2", "worker draining")
    assert not task.done()
    await engine.send(IDENTITY, SessionClose("pc-1", "peer left"))
    await asyncio.wait_for(task, 5)
    assert worker.sessions == {}


async def test_a_second_signal_stops_a_draining_worker_at_once(engine, start_worker):
    worker, task = await joined(engine, start_worker)
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1"))
    await hello(engine)
    os.kill(os.getpid(), signal.SIGTERM)
    await engine.expect(WorkerHeartbeat, draining=True)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 5)
    assert worker.sessions == {}  # its session was closed on the way out


async def test_a_signal_stops_a_worker_without_sessions_at_once(engine, start_worker):
    _, task = await joined(engine, start_worker)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(task, 5)


async def test_worker_stop_ends_its_sessions_and_the_worker(engine, start_worker):
    worker, task = await joined(engine, start_worker)
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1"))
    await hello(engine)
    await engine.send(IDENTITY, WorkerStop("engine stopping"))
    await asyncio.wait_for(task, 5)
    assert worker.sessions == {}


async def test_it_leaves_when_the_engine_is_silent_too_long(engine, start_worker):
    _, task = start_worker(engine_silent_after_s=0.3)
    await engine.expect(WorkerRegister)
    await engine.expect(WorkerHeartbeat)
    # The engine says nothing more; the worker gives up on it.
    await asyncio.wait_for(task, 5)


async def test_it_ignores_frames_it_cannot_read_and_sessions_it_does_not_have(engine, start_worker):
    _, task = await joined(engine, start_worker)
    await engine.send_raw(IDENTITY, b"\xc1 not msgpack")
    # A message only a worker sends: it decodes, but not as one from the engine.
    await engine.send_raw(IDENTITY, encode(WorkerRegister("engine?", 1, "h", 1)))
    await engine.send(IDENTITY, PeerStateChange("nobody", "connected"))
    await engine.send(IDENTITY, EngineHeartbeat())
    await engine.send(IDENTITY, SessionOpen("pc-1", "runner-1"))
    assert (await hello(engine))["pc_id"] == "pc-1"
    assert not task.done()


def test_a_worker_joining_over_tcp_needs_curve_keys():
    with pytest.raises(ValueError, match="curve_secret_key_file"):
        Worker(settings(), "tcp://127.0.0.1:5555", WORKER_ID)


def test_load_bot_finds_the_function():
    assert load_bot("tests.support.workers:greeter") == LoadedBot(greeter, None)


def test_the_bot_function_is_bot_unless_named():
    assert load_bot("tests.support.bots").run is bots.bot


@pytest.mark.parametrize("spec", ["tests.support.workers:", ":greeter", ""])
def test_load_bot_rejects_a_malformed_spec(spec):
    with pytest.raises(ValueError, match="package.module"):
        load_bot(spec)


@pytest.mark.parametrize(
    "spec", ["tests.support.workers:missing", "tests.support.workers", "engine.common.protocol:OPUS_FRAME_MS"]
)
def test_load_bot_rejects_a_name_that_is_not_callable(spec):
    with pytest.raises(ValueError, match="has no function"):
        load_bot(spec)


BOT_FILE = """
import tempfile

import my_bot_prompts
import transport
from pipecat.utils.file_storage import LocalFileStorage

imported_as = __name__
uploads = LocalFileStorage(tempfile.gettempdir())


async def bot(runner_args):
    return my_bot_prompts.GREETING


async def other(runner_args):
    return "other"


def create_file_storage():
    return uploads


if __name__ == "__main__":
    raise SystemExit("the __main__ block starts Pipecat's runner: it must not run in a worker")
"""


@pytest.fixture
def bot_project(tmp_path, monkeypatch):
    """A bot's folder: its file (``my-bot.py``), a module it imports, and one named like a package of the host's."""
    (tmp_path / "my-bot.py").write_text(BOT_FILE)
    (tmp_path / "my_bot_prompts.py").write_text('GREETING = "hello"\n')
    (tmp_path / "transport.py").write_text('raise ImportError("a neighbour hid the host\'s transport")\n')
    monkeypatch.setattr(sys, "path", [*sys.path])
    yield tmp_path
    for name in (BOT_FILE_MODULE, "my_bot_prompts"):
        sys.modules.pop(name, None)


async def test_load_bot_imports_a_bot_file_of_any_name_with_its_neighbours(bot_project):
    loaded = load_bot(f"{bot_project}/my-bot.py")
    assert await loaded.run(None) == "hello"
    # Not "__main__": the file's runner block did not run.
    assert sys.modules[BOT_FILE_MODULE].imported_as == BOT_FILE_MODULE == loaded.run.__module__
    assert await load_bot(f"{bot_project}/my-bot.py:other").run(None) == "other"


def test_what_the_bots_create_file_storage_makes_is_every_sessions_file_storage(bot_project):
    assert load_bot(f"{bot_project}/my-bot.py").file_storage is sys.modules[BOT_FILE_MODULE].uploads


def test_create_file_storage_must_be_synchronous(bot_project):
    (bot_project / "async-storage.py").write_text(
        BOT_FILE.replace("def create_file_storage", "async def create_file_storage")
    )
    with pytest.raises(TypeError, match="synchronous"):
        load_bot(f"{bot_project}/async-storage.py")


def test_load_bot_lets_a_missing_module_raise_its_import_error():
    with pytest.raises(ModuleNotFoundError):
        load_bot("tests.support.no_such_module:bot")
