"""The worker registry: handles that send through the engine's socket, what a heartbeat tells, and placement."""

import asyncio
import contextlib

import zmq

from engine.common.link import LinkSocket, bind_router
from engine.common.protocol import WorkerAccept, WorkerHeartbeat
from engine.registry import WorkerRegistry
from tests.support.engines import stand_in_workers
from tests.support.link import private_endpoint, until


@contextlib.contextmanager
def registry_on_a_socket():
    """A registry sending through a real ROUTER socket (a ``LinkSocket``, as the engine's), what the socket receives, and its endpoint."""
    with private_endpoint() as endpoint:
        context = zmq.Context()
        received: asyncio.Queue[list[zmq.Frame]] = asyncio.Queue()
        router = LinkSocket(bind_router(context, endpoint), received.put_nowait)
        try:
            yield WorkerRegistry(router), received, endpoint
        finally:
            router.close()
            context.term()


async def test_a_handle_sends_to_its_worker_through_the_socket():
    with registry_on_a_socket() as (registry, received, endpoint):
        async with stand_in_workers(endpoint, "w1") as (worker,):
            # Once the socket has heard the worker, it routes to it.
            await worker.send(WorkerHeartbeat(loop_lag_ms=0.0))
            await received.get()
            handle = registry.add("w1", 42, "box", 2)
            assert registry.get("w1") is handle and list(registry) == [handle]
            handle.outbox.send(WorkerAccept("engine-1"))
            assert await worker.expect(WorkerAccept) == WorkerAccept("engine-1")
            registry.remove(handle, "test")


async def test_a_worker_the_socket_cannot_reach_is_no_longer_alive():
    with registry_on_a_socket() as (registry, _, _):
        handle = registry.add("never-connected", 1, "box", 4)
        assert handle.has_room
        handle.outbox.send(WorkerAccept("engine-1"))
        await until(lambda: not handle.alive)
        assert "could not be delivered" in handle.lost_reason and registry.place() is None
        registry.remove(handle, "test")


async def test_a_heartbeat_tells_the_load_and_describe_shows_it():
    with registry_on_a_socket() as (registry, _, _):
        handle = registry.add("w1", 42, "box", 2)
        handle.sessions.add("pc-1")
        handle.heard(
            WorkerHeartbeat(
                loop_lag_ms=3.456, cpu_share=0.12345, frames_dropped=2, draining=True, session_ids=("pc-1",), rss_mb=201.26
            )
        )
        assert handle.describe() == {
            "worker_id": "w1",
            "pid": 42,
            "hostname": "box",
            "capacity": 2,
            "sessions": ["pc-1"],
            "reported_sessions": ["pc-1"],
            "rss_mb": 201.3,
            "loop_lag_ms": 3.46,
            "cpu_share": 0.123,
            "frames_dropped": 2,
            "draining": True,
            "retiring": None,
        }
        registry.remove(handle, "test")


async def test_placement_takes_the_least_loaded_worker_with_room():
    with registry_on_a_socket() as (registry, _, _):
        busy, idle, heavy = (registry.add(name, 1, "box", 4) for name in ("busy", "idle", "heavy"))
        busy.sessions.update({"a", "b"})
        heavy.heard(WorkerHeartbeat(loop_lag_ms=0.0, cpu_share=0.9))
        assert registry.place() is idle
        idle.sessions.update({"c", "d", "e", "f"})
        assert not idle.has_room
        assert registry.place() is busy
        for handle in list(registry):
            registry.remove(handle, "test")


async def test_a_worker_reporting_an_impossible_load_does_not_draw_every_session():
    with registry_on_a_socket() as (registry, _, _):
        honest, negative, not_a_number = (registry.add(name, 1, "box", 4) for name in ("honest", "negative", "nan"))
        honest.heard(WorkerHeartbeat(loop_lag_ms=1.0, cpu_share=0.2))
        negative.heard(WorkerHeartbeat(loop_lag_ms=-1e9, cpu_share=-1e9, frames_dropped=-1, rss_mb=-1))
        not_a_number.heard(WorkerHeartbeat(loop_lag_ms=float("nan"), cpu_share=float("nan")))
        assert (negative.cpu_share, negative.loop_lag_ms, negative.rss_mb) == (0.0, 0.0, 0.0)
        # A load that is not a number counts as the most a worker may report.
        assert not_a_number.cpu_share > 1 and not_a_number.loop_lag_ms > 1000
        assert registry.place() is negative  # idle as an idle worker, no more
        negative.sessions.add("a")
        assert registry.place() is honest
        for handle in list(registry):
            registry.remove(handle, "test")


async def test_a_draining_retiring_or_removed_worker_takes_no_session():
    with registry_on_a_socket() as (registry, _, _):
        draining, removed = registry.add("draining", 1, "box", 4), registry.add("removed", 1, "box", 4)
        retiring = registry.add("retiring", 1, "box", 4)
        retiring.retiring = "memory"
        draining.heard(WorkerHeartbeat(loop_lag_ms=0.0, draining=True))
        registry.remove(removed, "gone")
        assert registry.place() is None
        assert registry.get("removed") is None
        assert (removed.alive, removed.lost_reason) == (False, "gone")
        assert removed.pump_task.cancelling()
        registry.remove(draining, "test")
        registry.remove(retiring, "test")


async def test_a_worker_added_again_replaces_its_old_handle():
    with registry_on_a_socket() as (registry, _, _):
        old = registry.add("w1", 1, "box", 4)
        new = registry.add("w1", 2, "box", 4)
        assert registry.get("w1") is new
        # Removing the old handle late does not forget the new one.
        registry.remove(old, "restarted")
        assert registry.get("w1") is new
        registry.remove(new, "test")
