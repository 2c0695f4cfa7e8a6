"""The HTTP front of several engines, in process against real engine processes: each request reaches the engine that owns it."""

import contextlib

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.common.settings import HostSettings
from engine.engine_pool import EnginePool
from engine.front import _merged_metrics, create_front_app
from tests.support.engines import (
    END_OF_CANDIDATES,
    client_offer,
    running_pool,
    stand_in_workers,
)


@contextlib.asynccontextmanager
async def front_of(pool: EnginePool, client: httpx.AsyncClient):
    """An HTTP client of the front app over ``pool``."""
    transport = httpx.ASGITransport(app=create_front_app(pool, client, HostSettings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://front", timeout=30) as front:
        yield front


@contextlib.asynccontextmanager
async def two_engines_one_with_a_worker():
    """Two engine processes, the second with a stand-in worker; the pool, its front, and the engine with the worker."""
    async with running_pool(2) as (pool, client), front_of(pool, client) as front:
        busy = pool.shards[1]
        async with stand_in_workers(busy.endpoint, "w1") as (worker,):
            await worker.register()
            worker.keep_beating()
            yield pool, front, busy


def test_metrics_of_every_engine_in_one_exposition():
    text = "# HELP smallwebrtc_sessions_active sessions\n# TYPE smallwebrtc_sessions_active gauge\nsmallwebrtc_sessions_active 2.0\n"
    merged = _merged_metrics({"a": text, "b": text.replace("2.0", "3.0")}).decode()
    (family,) = text_string_to_metric_families(merged)
    assert {(s.labels["engine"], s.value) for s in family.samples} == {("a", 2.0), ("b", 3.0)}


async def test_with_no_engine_running_every_route_is_503():
    async with httpx.AsyncClient() as client:
        pool = EnginePool(HostSettings(engines=2, workers=0), None, client)
        async with front_of(pool, client) as front:
            for reply in (
                await front.post("/api/offer", json={"sdp": "v=0", "type": "offer"}),
                await front.post("/start", json={}),
                await front.get("/status"),
            ):
                assert (reply.status_code, reply.json()["detail"]) == (503, "no engine is running")
            assert (await front.get("/healthz")).json() == {"status": "ok", "engines": 0}
            reply = await front.get("/readyz")
            assert (reply.status_code, reply.json()["reason"]) == (503, "no engine is running")


async def test_sessions_reach_an_engine_with_room_and_then_their_owner():
    async with two_engines_one_with_a_worker() as (pool, front, busy), client_offer() as pc:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        # Whichever engine's turn it is, the one without a worker passes the offer on.
        for _ in range(2):
            answer = (await front.post("/api/offer", json=offer)).json()
            assert pool.owner(answer["pc_id"]) is busy
        reply = await front.patch("/api/offer", json={"pc_id": answer["pc_id"], "candidates": [END_OF_CANDIDATES]})
        assert reply.json() == {"status": "success"}
        reply = await front.patch("/api/offer", json={"pc_id": "nobody-1", "candidates": [END_OF_CANDIDATES]})
        assert reply.status_code == 404

        # /start goes round; each session's offer goes to the engine that registered it.
        session_ids = [(await front.post("/start", json={})).json()["sessionId"] for _ in range(2)]
        statuses = [(await front.post(f"/sessions/{sid}/api/offer", json=offer)).status_code for sid in session_ids]
        assert sorted(statuses) == [200, 503]
        assert (await front.post("/sessions/unknown/api/offer", json=offer)).status_code == 404


async def test_workers_readiness_and_metrics_of_every_engine_together():
    async with two_engines_one_with_a_worker() as (pool, front, busy):
        engine_ids = [shard.engine_id for shard in pool.shards]
        workers = (await front.get("/workers")).json()
        assert sorted(workers["engines"]) == sorted(engine_ids)
        assert [(w["worker_id"], w["engine_id"]) for w in workers["workers"]] == [("w1", busy.engine_id)]
        assert (await front.get("/readyz")).json() == {"ready": True}
        assert (await front.get("/healthz")).json() == {"status": "ok", "engines": 2}

        metrics = (await front.get("/metrics")).text
        live = {
            sample.labels["engine"]: sample.value
            for family in text_string_to_metric_families(metrics) if family.name == "smallwebrtc_workers_live"
            for sample in family.samples
        }
        assert live == {engine_id: (1.0 if engine_id == busy.engine_id else 0.0) for engine_id in engine_ids}

        assert (await front.get("/status")).json() == {"status": "ready", "transports": ["webrtc"]}
        assert "<html" in (await front.get("/")).text.lower()
        # Every engine answers the drain; with the admin API off, each says so.
        assert (await front.post("/admin/drain")).status_code == 404


async def test_a_body_over_the_limit_is_413_at_the_front():
    async with httpx.AsyncClient() as client:
        pool = EnginePool(HostSettings(engines=2, workers=0), None, client)
        transport = httpx.ASGITransport(app=create_front_app(pool, client, HostSettings(max_request_body_bytes=4096)))
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as front:
            big = {"sdp": "x" * 5000, "type": "offer"}
            for method in ("POST", "PATCH"):
                reply = await front.request(method, "/api/offer", json=big)
                assert reply.status_code == 413 and "4096 bytes" in reply.json()["detail"]
            # Under the limit, it goes on to the engines (none runs).
            assert (await front.post("/api/offer", json={"sdp": "v=0", "type": "offer"})).status_code == 503
