"""The engine's end of the worker link: joining, heartbeats both ways, session messages handed on, workers declared lost."""

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.common.protocol import (
    AppMessageOut,
    EngineHeartbeat,
    SessionClose,
    WorkerAccept,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
)
from engine.worker_link import (
    RUNTIME_DIR_PREFIX,
    WorkerLink,
    local_endpoint,
    remove_stale_runtime_dirs,
)
from tests.support.engines import (
    curve_keys,
    engine_settings,
    stand_in_once_its_id_is_free,
    stand_in_workers,
)
from tests.support.host import REPO
from tests.support.link import private_endpoint, until

# A tcp endpoint on loopback, on a port the system picks.
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


class Owner:
    """What the link reports to its owner, kept in order."""

    def __init__(self):
        self.session_messages = []
        self.lost = []
        self.heard = []

    def session_message(self, handle, message, payload):
        self.session_messages.append((handle.worker_id, message, [frame.bytes for frame in payload]))

    def worker_lost(self, handle, reason):
        self.lost.append((handle.worker_id, reason))

    def worker_heard(self, handle):
        self.heard.append(handle.worker_id)


@contextlib.asynccontextmanager
async def running_link(**overrides):
    """A started link and its owner; stopped afterwards."""
    with private_endpoint() as endpoint:
        owner = Owner()
        link = WorkerLink(engine_settings(endpoint, **overrides), "engine-1", owner.session_message, owner.worker_lost, on_heartbeat=owner.worker_heard)
        link.start()
        try:
            yield link, owner
        finally:
            await link.stop()


async def test_a_worker_that_registers_is_accepted_and_hears_heartbeats():
    async with running_link(heartbeat_interval_s=0.1) as (link, _), stand_in_workers(link.endpoint, "w1") as (worker,):
        assert await worker.register(capacity=3) == WorkerAccept("engine-1")
        handle = link.registry.get("w1")
        assert (handle.hostname, handle.capacity) == ("stand-in", 3)
        assert await worker.expect(EngineHeartbeat) == EngineHeartbeat()


async def test_a_worker_gets_no_more_capacity_than_the_engines_worker_capacity():
    async with running_link(worker_capacity=2) as (link, _), stand_in_workers(link.endpoint, "big", "small") as (big, small):
        await big.register(capacity=1000)
        await small.register(capacity=1)
        assert (link.registry.get("big").capacity, link.registry.get("small").capacity) == (2, 1)


async def test_a_heartbeat_carries_the_workers_load():
    async with running_link() as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        await worker.send(
            WorkerHeartbeat(loop_lag_ms=7.5, cpu_share=0.25, frames_dropped=3, draining=True, session_ids=("a", "b"), rss_mb=99.0)
        )
        handle = link.registry.get("w1")
        await until(lambda: handle.draining)
        assert (handle.reported_sessions, handle.loop_lag_ms, handle.cpu_share, handle.frames_dropped, handle.rss_mb) == (
            {"a", "b"}, 7.5, 0.25, 3, 99.0
        )
        assert owner.heard == ["w1"]


async def test_a_worker_declared_lost_that_beats_again_is_told_to_stop():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 0.5}
    async with running_link(**settings) as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        # Silent past worker_dead_after_s (as a stopped process is): lost.
        await until(lambda: owner.lost)
        await worker.send(WorkerHeartbeat(loop_lag_ms=0.0))
        assert await worker.expect(WorkerStop) == WorkerStop("this engine declared the worker lost: its sessions moved")


async def test_session_messages_of_a_registered_worker_reach_the_owner_with_their_payload():
    async with running_link() as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        # Neither a message from before the worker registered nor an unreadable one is handed on.
        await worker.send(SessionClose("pc-1", "not registered yet"))
        await worker.socket.send_multipart([b"not msgpack"])
        await worker.register()
        await worker.send(AppMessageOut("pc-1", '{"a": 1}'), b"payload")
        await until(lambda: owner.session_messages)
        assert owner.session_messages == [("w1", AppMessageOut("pc-1", '{"a": 1}'), [b"payload"])]


async def test_a_silent_worker_is_lost():
    async with running_link(heartbeat_interval_s=0.1, worker_dead_after_s=0.5) as (link, owner):
        async with stand_in_workers(link.endpoint, "w1") as (worker,):
            # Connected, but it says nothing.
            await worker.register()
            await until(lambda: owner.lost)
        [(worker_id, reason)] = owner.lost
        assert worker_id == "w1" and reason.startswith("no heartbeat for")
        assert link.registry.get("w1") is None


async def test_a_worker_that_disconnected_is_lost_at_the_next_message_to_it():
    async with running_link(heartbeat_interval_s=0.1, worker_dead_after_s=30) as (link, owner):
        async with stand_in_workers(link.endpoint, "w1") as (worker,):
            await worker.register()
        await until(lambda: owner.lost)
        assert owner.lost == [("w1", "not connected: a message to it could not be delivered")]


async def test_a_worker_that_keeps_beating_stays():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 0.5}
    async with running_link(**settings) as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        worker.keep_beating()
        await asyncio.sleep(1.0)
        assert link.registry.get("w1") is not None and not owner.lost


async def test_a_worker_that_registers_again_was_restarted():
    async with running_link() as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        first = link.registry.get("w1")
        await worker.register()
        assert owner.lost == [("w1", "registered again (restarted)")]
        assert link.registry.get("w1") is not first and not first.alive


async def test_a_second_connection_with_a_live_workers_id_gets_nothing_and_changes_nothing():
    async with running_link(heartbeat_interval_s=0.1) as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        handle = link.registry.get("w1")
        async with stand_in_workers(link.endpoint, "w1") as (impostor,):
            await impostor.send(WorkerRegister("w1", 666, "impostor", 4))
            await impostor.send(AppMessageOut("pc-1", "from the impostor"))
            # The engine goes on sending to the worker, and hearing it alone.
            for _ in range(5):
                await worker.expect(EngineHeartbeat)
            await worker.send(AppMessageOut("pc-1", "from the worker"))
            await until(lambda: owner.session_messages)
            assert owner.session_messages == [("w1", AppMessageOut("pc-1", "from the worker"), [])]
            assert link.registry.get("w1") is handle and handle.pid == os.getpid() and not owner.lost
            assert await impostor.socket.poll(0) == 0


async def test_the_id_of_a_worker_that_stopped_answering_comes_free():
    # A stopped process keeps its connection open, as a machine cut off from the network does:
    # only the socket's own heartbeats can tell that nobody answers on it.
    async with running_link(heartbeat_interval_s=0.1, worker_dead_after_s=1.0) as (link, owner):
        frozen = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers", "--engine", link.endpoint, "--worker-id", "w1",
            "--bot", "tests.support.workers:greeter", cwd=REPO, env={**os.environ, "SMALLWEBRTC_HOST_HEARTBEAT_INTERVAL_S": "0.1"},
        )
        try:
            await until(lambda: (handle := link.registry.get("w1")) and handle.pid == frozen.pid, timeout=30)
            os.kill(frozen.pid, signal.SIGSTOP)
            register = WorkerRegister("w1", os.getpid(), "stand-in", 4)

            def stand_in_joined():
                return (handle := link.registry.get("w1")) and handle.pid == os.getpid()

            async with stand_in_once_its_id_is_free(link.endpoint, "w1", register, stand_in_joined):
                assert [worker_id for worker_id, _ in owner.lost] == ["w1"]
        finally:
            frozen.kill()
            await frozen.wait()


@pytest.fixture
def keys(tmp_path):
    """The engine's curve settings, and the keys of two workers it accepts, a and b."""
    return curve_keys(tmp_path, "a", "b")


@contextlib.asynccontextmanager
async def worker_a_gone(keys):
    """A link over CurveZMQ on which worker w1 registered with key a, then closed its connection.

    No heartbeat goes to w1 while the test runs: the engine can learn that its
    connection is gone only from what the next holder of its id sends.
    """
    curve, worker_keys = keys
    settings = {"engine_endpoint": LOOPBACK_ANY_PORT, "heartbeat_interval_s": 60, "worker_dead_after_s": 60, **curve}
    async with running_link(**settings) as (link, owner):
        async with stand_in_workers(link.endpoint, "w1", keys=worker_keys["a"]) as (worker,):
            await worker.register()
        yield link, owner


async def test_a_registration_as_a_worker_with_another_key_is_refused_and_that_worker_is_lost(keys, log_messages):
    async with worker_a_gone(keys) as (link, owner):
        register = WorkerRegister("w1", os.getpid(), "other", 4)
        async with stand_in_once_its_id_is_free(link.endpoint, "w1", register, lambda: owner.lost, keys=keys[1]["b"]) as other:
            # What the engine would send w1 now reaches this connection: w1's sessions must move.
            assert owner.lost == [("w1", "its id is held by a connection with another key")]
            assert any(m.startswith("refused a registration as worker w1 with key") for m in log_messages)
            assert link.registry.get("w1") is None and await other.socket.poll(0) == 0


async def test_a_message_sent_as_a_worker_with_another_key_is_dropped_and_that_worker_is_lost(keys, log_messages):
    async with worker_a_gone(keys) as (link, owner):
        message = AppMessageOut("pc-1", '{"from": "b"}')
        async with stand_in_once_its_id_is_free(link.endpoint, "w1", message, lambda: owner.lost, keys=keys[1]["b"]):
            assert owner.lost == [("w1", "its id is held by a connection with another key")]
            assert owner.session_messages == []
            assert any(m.startswith("dropped AppMessageOut sent as worker w1 with key") for m in log_messages)


async def test_a_worker_that_comes_back_with_its_own_key_is_heard_as_before(keys):
    async with worker_a_gone(keys) as (link, owner):
        handle = link.registry.get("w1")
        message = AppMessageOut("pc-1", '{"from": "a"}')
        async with stand_in_once_its_id_is_free(link.endpoint, "w1", message, lambda: owner.session_messages, keys=keys[1]["a"]):
            assert owner.session_messages == [("w1", message, [])]
            assert link.registry.get("w1") is handle and not owner.lost


async def test_a_local_worker_whose_process_exits_is_lost_at_once():
    async with running_link() as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; sys.exit(3)")
        link.watch_local_worker("w1", process)
        await process.wait()
        await until(lambda: owner.lost)
        assert owner.lost == [("w1", "process exited with code 3")]


async def test_a_worker_whose_outbox_is_stuck_is_lost():
    async with running_link() as (link, owner), stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        outbox = link.registry.get("w1").outbox
        # Queued faster than any pump could send: the outbox overflows and breaks.
        while not outbox.broken:
            outbox.send(EngineHeartbeat())
        await until(lambda: owner.lost)
        [(worker_id, reason)] = owner.lost
        assert worker_id == "w1" and reason.startswith("stuck")


async def test_stop_tells_every_worker_to_leave_and_removes_its_private_endpoint():
    owner = Owner()
    link = WorkerLink(engine_settings(""), "engine-1", owner.session_message, owner.worker_lost, on_heartbeat=owner.worker_heard)
    link.start()
    socket_file = link.endpoint.removeprefix("ipc://")
    assert os.path.exists(socket_file)
    async with stand_in_workers(link.endpoint, "w1") as (worker,):
        await worker.register()
        await link.stop()
        assert await worker.expect(WorkerStop) == WorkerStop("engine stopping")
    assert not os.path.exists(socket_file)


def mode_of(path: Path) -> int:
    """A file's permission bits."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_only_this_user_may_reach_an_ipc_link():
    owner = Owner()
    link = WorkerLink(engine_settings(""), "engine-1", owner.session_message, owner.worker_lost)
    link.start()
    try:
        private_socket = Path(link.endpoint.removeprefix("ipc://"))
        assert (mode_of(private_socket.parent), mode_of(private_socket)) == (0o700, 0o600)
    finally:
        await link.stop()
    # An endpoint the operator chose may be in a directory others can enter: its socket is this user's alone.
    async with running_link() as (link, _):
        assert mode_of(Path(link.endpoint.removeprefix("ipc://"))) == 0o600


@pytest.mark.parametrize(
    "bound, local",
    [
        ("tcp://0.0.0.0:7861", "tcp://127.0.0.1:7861"),
        ("tcp://[::]:7861", "tcp://[::1]:7861"),
        ("tcp://10.0.0.5:7861", "tcp://10.0.0.5:7861"),
        ("ipc:///run/engine.sock", "ipc:///run/engine.sock"),
    ],
)
def test_local_workers_reach_a_wildcard_address_through_loopback(bound, local):
    assert local_endpoint(bound) == local


async def test_curve_needs_a_directory_of_authorized_keys(tmp_path):
    owner = Owner()
    settings = engine_settings(
        "ipc://unused", curve_secret_key_file=str(tmp_path / "engine.key_secret"), curve_authorized_keys_dir=str(tmp_path / "none")
    )
    link = WorkerLink(settings, "engine-1", owner.session_message, owner.worker_lost, on_heartbeat=owner.worker_heard)
    with pytest.raises(ValueError, match="curve_authorized_keys_dir"):
        link.start()
    await link.stop()


def test_runtime_directories_of_dead_engines_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{RUNTIME_DIR_PREFIX}{dead.stdout.strip()}-abc"
    live = tmp_path / f"{RUNTIME_DIR_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{RUNTIME_DIR_PREFIX}notapid-ghi"
    for directory in (stale, live, unrelated):
        directory.mkdir()
    remove_stale_runtime_dirs()
    assert (stale.exists(), live.exists(), unrelated.exists()) == (False, True, True)
