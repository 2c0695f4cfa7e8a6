"""The engine's sessions: offers placed on workers, refusals, drain, lost workers, stop, answers rewritten."""

import asyncio
import os
import uuid

import pytest

from engine.common.protocol import (
    SessionClose,
    SessionOpen,
    WorkerDrain,
    WorkerHeartbeat,
    WorkerStop,
)
from engine.sessions import Engine, OfferRejected
from tests.support.engines import (
    apply_answer,
    client_offer,
    engine_settings,
    running_engine,
    stand_in_workers,
)
from tests.support.link import private_endpoint, until


async def offer(engine: Engine, pc, **fields) -> dict:
    """A new session's offer, as signaling hands it to the engine; the client applies the answer, so it connects."""
    request = {"pc_id": None, "restart_pc": False, "body": None, "runner_session_id": None, **fields}
    answer = await engine.offer(pc.localDescription.sdp, "offer", **request)
    await apply_answer(pc, answer)
    return answer


async def test_a_new_offer_is_answered_and_its_bot_opened_on_a_worker():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register(capacity=2)
        async with client_offer() as pc:
            answer = await offer(engine, pc, body={"x": 1}, runner_session_id="runner-1")
            assert answer["type"] == "answer" and "a=candidate" in answer["sdp"]
            assert answer["pc_id"].startswith(engine.engine_id + "-")
            opening = await worker.expect(SessionOpen)
            assert opening == SessionOpen(answer["pc_id"], "runner-1", {"x": 1})
            assert engine.registry.get("w1").sessions == {answer["pc_id"]}
            assert engine.live_peer_count() == 1
            assert engine.readiness() is None


async def test_the_host_id_starts_every_pc_id_so_a_balancer_finds_the_owner():
    async with running_engine(host_id="lb_a") as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        async with client_offer() as pc:
            answer = await offer(engine, pc)
        host_id, pid, engine_part, secret = answer["pc_id"].split("-")
        assert (host_id, int(pid), len(engine_part)) == ("lb_a", os.getpid(), 6)
        assert uuid.UUID(secret).version == 4


async def test_new_sessions_go_to_the_least_loaded_worker():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1", "w2") as workers:
        for worker in workers:
            await worker.register()
        async with client_offer() as first, client_offer() as second:
            await offer(engine, first)
            await offer(engine, second)
        assert [len(engine.registry.get(w.worker_id).sessions) for w in workers] == [1, 1]


async def test_no_worker_with_room_is_503_with_a_retry():
    async with running_engine() as engine, client_offer() as pc:
        assert engine.readiness() == "no worker with room"
        with pytest.raises(OfferRejected) as refused:
            await offer(engine, pc)
        assert (refused.value.status, refused.value.retry_after) == (503, 2)

        async with stand_in_workers(engine.endpoint, "w1") as (worker,):
            await worker.register(capacity=1)
            await offer(engine, pc)
            assert engine.readiness() == "no worker with room"
            with pytest.raises(OfferRejected, match="capacity") as refused:
                await offer(engine, pc)
            assert refused.value.status == 503


async def test_an_unknown_pc_id_is_404():
    async with running_engine() as engine:
        with pytest.raises(OfferRejected, match="no session with pc_id nobody") as refused:
            await engine.offer("v=0", "offer", pc_id="nobody", restart_pc=False, body=None, runner_session_id=None)
        assert refused.value.status == 404
        with pytest.raises(OfferRejected) as refused:
            await engine.add_candidates("nobody", [])
        assert refused.value.status == 404


async def test_an_offer_that_cannot_be_applied_is_400_and_leaves_no_session():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        with pytest.raises(OfferRejected, match="invalid offer SDP") as refused:
            await engine.offer("garbage", "offer", pc_id=None, restart_pc=False, body=None, runner_session_id=None)
        assert refused.value.status == 400
        await until(lambda: not engine.peers)
        assert engine.registry.get("w1").sessions == set()


async def test_single_mode_takes_one_session_at_a_time():
    async with running_engine(connection_mode="single") as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        async with client_offer() as first, client_offer() as second:
            await offer(engine, first)
            with pytest.raises(OfferRejected, match="existing connection") as refused:
                await offer(engine, second)
        assert refused.value.status == 400


async def test_a_draining_engine_refuses_new_sessions_and_reports_when_the_last_ends():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        drained = asyncio.Event()
        engine.on_drained = drained.set
        async with client_offer() as pc:
            pc_id = (await offer(engine, pc))["pc_id"]
            engine.drain("test")
            assert engine.draining and engine.readiness() == "draining"
            with pytest.raises(OfferRejected) as refused:
                await offer(engine, pc)
            assert (refused.value.status, refused.value.retry_after) == (503, 30)
            assert not drained.is_set()

            await worker.send(SessionClose(pc_id, "bot ended"))
            await asyncio.wait_for(drained.wait(), 5)
        assert engine.live_peer_count() == 0


async def test_a_session_hears_only_the_worker_that_runs_it():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1", "w2") as (runner, other):
        await runner.register()
        async with client_offer() as pc:
            pc_id = (await offer(engine, pc))["pc_id"]
            await other.register()
            await other.send(SessionClose(pc_id, "not mine"))
            # What the other worker sent next shows the close before it was handled.
            await other.send(WorkerHeartbeat(loop_lag_ms=0.0, draining=True))
            await until(lambda: engine.registry.get("w2").draining)
            assert engine.live_peer_count() == 1

            await runner.send(SessionClose(pc_id, "bot ended"))
            await until(lambda: engine.live_peer_count() == 0)
            assert engine.registry.get("w1").sessions == set()


async def test_a_lost_workers_sessions_move_to_a_worker_with_room():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 1.0}
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "lost", "survivor") as workers:
        lost, survivor = workers
        await lost.register()
        async with client_offer() as pc:
            pc_id = (await offer(engine, pc))["pc_id"]
            assert engine.registry.get("lost").sessions == {pc_id}
            await survivor.register()
            survivor.keep_beating()
            lost.close()

            moved = await survivor.expect(SessionOpen)
            assert moved.session_id == pc_id
            assert engine.registry.get("lost") is None
            assert engine.registry.get("survivor").sessions == {pc_id}
            assert engine.live_peer_count() == 1
            assert engine.metrics.registry.get_sample_value("smallwebrtc_sessions_moved_total") == 1


async def test_a_session_moves_once_and_ends_when_its_second_worker_is_lost_too():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 1.0}
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "first", "second", "third") as workers:
        first, second, third = workers
        await first.register()
        async with client_offer() as pc:
            await offer(engine, pc)
            for worker in (second, third):
                await worker.register()
                worker.keep_beating()
            first.close()
            moved = await until(lambda: next((w for w in (second, third) if engine.registry.get(w.worker_id).sessions), None))
            moved.close()
            await until(lambda: engine.live_peer_count() == 0)
            assert engine.metrics.registry.get_sample_value("smallwebrtc_sessions_moved_total") == 1
            left = third if moved is second else second
            assert engine.registry.get(left.worker_id).sessions == set()


async def test_a_lost_workers_sessions_end_when_no_worker_has_room():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 1.0}
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "lost") as (lost,):
        await lost.register()
        async with client_offer() as pc:
            await offer(engine, pc)
            lost.close()
            await until(lambda: engine.live_peer_count() == 0)
        assert engine.registry.get("lost") is None


async def test_a_session_its_worker_does_not_run_ends_and_a_bot_the_engine_did_not_place_is_closed():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 0.5}
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        # It runs a bot for a session that is not (or no longer) its own, and not the one it is given.
        worker.session_ids = ("pc-stray",)
        worker.keep_beating()
        async with client_offer() as pc:
            await offer(engine, pc)
            await worker.expect(SessionOpen)
            assert await worker.expect(SessionClose, session_id="pc-stray") == SessionClose(
                "pc-stray", "not a session of this worker"
            )
            await until(lambda: engine.live_peer_count() == 0)
        assert engine.metrics.registry.get_sample_value("smallwebrtc_sessions_total", {"outcome": "worker_lost"}) == 1


async def test_a_worker_past_its_memory_limit_is_retired_and_its_sessions_move_after_the_drain_timeout():
    settings = {"heartbeat_interval_s": 0.1, "worker_dead_after_s": 1.0, "worker_memory_limit_mb": 300, "drain_timeout_s": 1.0}
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "big", "fresh") as (big, fresh):
        await big.register()
        big.keep_beating()
        async with client_offer() as pc:
            pc_id = (await offer(engine, pc))["pc_id"]
            await big.expect(SessionOpen)
            big.session_ids = (pc_id,)
            await fresh.register()
            # A worker that never ran a session is not retired, whatever its size.
            fresh.rss_mb = 900.0
            fresh.keep_beating()
            big.rss_mb = 400.0
            assert await big.expect(WorkerDrain) == WorkerDrain("memory: 400 MB, past worker_memory_limit_mb = 300")
            handle = engine.registry.get("big")
            assert handle.retiring == "memory" and not handle.has_room
            assert engine.registry.get("fresh").retiring is None
            assert engine.metrics.registry.get_sample_value("smallwebrtc_workers_retired_total", {"reason": "memory"}) == 1
            # Still running its session past drain_timeout_s: the session moves.
            moved = await fresh.expect(SessionOpen)
            assert moved.session_id == pc_id and engine.registry.get("big") is None
            assert engine.live_peer_count() == 1


async def test_stop_ends_every_session_and_tells_the_workers_to_leave():
    with private_endpoint() as endpoint:
        engine = Engine(engine_settings(endpoint))
        await engine.start()
        async with stand_in_workers(endpoint, "w1") as (worker,), client_offer() as pc:
            await worker.register()
            pc_id = (await offer(engine, pc))["pc_id"]
            await worker.expect(SessionOpen)
            await engine.stop()
            assert await worker.expect(SessionClose) == SessionClose(pc_id, "host shutting down")
            assert await worker.expect(WorkerStop) == WorkerStop("engine stopping")
        assert not engine.peers


@pytest.mark.parametrize(
    "settings, present, absent",
    [
        ({}, ["127.0.0.1", "sha-384"], []),
        ({"ice_announced_address": "203.0.113.7"}, ["203.0.113.7 "], ["127.0.0.1 "]),
        # Pipecat's ESP32 munging: no fingerprint an ESP32 cannot check.
        ({"esp32": True}, ["sha-256"], ["sha-384", "sha-512"]),
    ],
)
async def test_answers_are_rewritten_for_the_client_that_reads_them(settings, present, absent):
    async with running_engine(**settings) as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        async with client_offer() as pc:
            sdp = (await offer(engine, pc))["sdp"]
    candidates = "\n".join(line for line in sdp.splitlines() if "candidate" in line or "fingerprint" in line)
    assert all(text in candidates for text in present), candidates
    assert not any(text in candidates for text in absent), candidates
