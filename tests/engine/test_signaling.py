"""The engine's HTTP API, in process against a real engine: the wire contract's routes, refusals, tokens, probes."""

import contextlib

import httpx

from engine.common.protocol import SessionOpen
from engine.signaling import create_app
from tests.support.engines import (
    END_OF_CANDIDATES,
    client_offer,
    running_engine,
    stand_in_workers,
)


@contextlib.asynccontextmanager
async def api(**settings):
    """A started engine with no worker, and an HTTP client of its API."""
    async with running_engine(**settings) as engine:
        transport = httpx.ASGITransport(app=create_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            yield engine, client


async def test_status_and_health():
    async with api() as (_, client):
        assert (await client.get("/status")).json() == {"status": "ready", "transports": ["webrtc"]}
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_ready_once_a_worker_has_room():
    async with api() as (engine, client):
        reply = await client.get("/readyz")
        assert (reply.status_code, reply.json()) == (503, {"ready": False, "reason": "no worker with room"})
        async with stand_in_workers(engine.endpoint, "w1") as (worker,):
            await worker.register()
            assert (await client.get("/readyz")).json() == {"ready": True}
            workers = (await client.get("/workers")).json()
            assert workers["engine_id"] == engine.engine_id
            assert [w["worker_id"] for w in workers["workers"]] == ["w1"]


async def test_an_offer_no_worker_takes_is_503_and_counted():
    async with api() as (_, client):
        reply = await client.post("/api/offer", json={"sdp": "v=0", "type": "offer"})
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
        assert "capacity" in reply.json()["detail"]
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'smallwebrtc_offers_refused_total{status="503"} 1.0' in metrics.text
        assert "smallwebrtc_workers_live 0.0" in metrics.text


async def test_an_unknown_pc_id_is_404():
    async with api() as (_, client):
        reply = await client.post("/api/offer", json={"sdp": "v=0", "type": "offer", "pc_id": "nobody"})
        assert (reply.status_code, reply.json()["detail"]) == (404, "no session with pc_id nobody")
        reply = await client.patch("/api/offer", json={"pc_id": "nobody", "candidates": [END_OF_CANDIDATES]})
        assert reply.status_code == 404


async def test_bad_requests_are_4xx():
    async with api() as (_, client):
        reply = await client.post("/api/offer", content="{not json", headers={"content-type": "application/json"})
        assert reply.status_code == 422 and "JSON" in reply.text
        assert (await client.post("/api/offer", json={"type": "offer"})).status_code == 422
        garbage = {"candidate": "candidate:garbage", "sdp_mid": "0", "sdp_mline_index": 0}
        reply = await client.patch("/api/offer", json={"pc_id": "nobody", "candidates": [garbage]})
        assert reply.status_code == 400 and "invalid ICE candidate" in reply.json()["detail"]


async def test_an_offer_opens_a_session_and_takes_its_candidates():
    async with api() as (engine, client), stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        async with client_offer() as pc:
            offer = {"sdp": pc.localDescription.sdp, "type": "offer", "requestData": {"video": False}}
            answer = (await client.post("/api/offer", json=offer)).json()
            assert answer["type"] == "answer" and answer["pc_id"].startswith(engine.engine_id)
            assert (await worker.expect(SessionOpen)).body == {"video": False}
            reply = await client.patch("/api/offer", json={"pc_id": answer["pc_id"], "candidates": [END_OF_CANDIDATES]})
            assert reply.json() == {"status": "success"}


async def test_start_hands_out_the_ice_servers_and_takes_only_webrtc():
    async with api(ice_servers=["stun:127.0.0.1:3478"]) as (_, client):
        start = (await client.post("/start", json={"transport": "webrtc"})).json()
        assert start["sessionId"]
        assert start["iceConfig"] == {"iceServers": [{"urls": "stun:127.0.0.1:3478"}]}
        reply = await client.post("/start", json={"transport": "daily"})
        assert reply.status_code == 400 and "daily" in reply.json()["detail"]


async def test_a_session_started_at_start_gets_its_body_and_id():
    async with api() as (engine, client):
        start = (await client.post("/start", json={"transport": "webrtc", "body": {"a": 1}})).json()
        reply = await client.post("/sessions/unknown/api/offer", json={"sdp": "v=0", "type": "offer"})
        assert reply.status_code == 404
        async with stand_in_workers(engine.endpoint, "w1") as (worker,), client_offer() as pc:
            await worker.register()
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            answer = (await client.post(f"/sessions/{start['sessionId']}/api/offer", json=offer)).json()
            opening = await worker.expect(SessionOpen)
            assert opening == SessionOpen(answer["pc_id"], start["sessionId"], {"a": 1})


async def test_the_api_token_guards_the_session_routes():
    async with api(api_token="api-secret") as (_, client):
        reply = await client.post("/start", json={})
        assert reply.status_code == 401 and "Bearer" in reply.json()["detail"]
        assert (await client.post("/start", json={}, headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await client.post("/start", json={}, headers={"Authorization": "Bearer api-secret"})).status_code == 200
        assert (await client.post("/api/offer", json={"sdp": "v=0", "type": "offer"})).status_code == 401
        assert (await client.get("/status")).status_code == 200


async def test_the_admin_api_is_off_without_its_token():
    async with api() as (engine, client):
        assert (await client.post("/admin/drain")).status_code == 404
        assert not engine.draining


async def test_admin_drain_needs_the_admin_token():
    async with api(api_token="api-secret", admin_token="admin-secret") as (engine, client):
        assert (await client.post("/admin/drain", headers={"Authorization": "Bearer api-secret"})).status_code == 401
        reply = await client.post("/admin/drain", headers={"Authorization": "Bearer admin-secret"})
        assert reply.json() == {"draining": True, "sessions": 0}
        assert engine.draining
        assert (await client.get("/readyz")).json() == {"ready": False, "reason": "draining"}


async def test_the_demo_page_is_served():
    async with api() as (_, client):
        assert "<html" in (await client.get("/")).text.lower()
        assert (await client.get("/static/demo.js")).status_code == 200
