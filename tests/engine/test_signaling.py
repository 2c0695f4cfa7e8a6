"""The engine's HTTP API, in process against a real engine: the wire contract's routes, refusals, tokens, probes."""

import asyncio
import base64
import contextlib
import hashlib
import hmac

import httpx
from loguru import logger

from engine.common.protocol import SessionOpen
from engine.signaling import create_app
from tests.support.engines import (
    END_OF_CANDIDATES,
    apply_answer,
    client_offer,
    running_engine,
    stand_in_workers,
)
from tests.support.peers import client_pc, loopback_only


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
            await apply_answer(pc, answer)
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


async def test_start_mints_turn_credentials_from_the_shared_secret():
    async with api(turn_shared_secret="s3cret", ice_servers=["turn:127.0.0.1:3478?transport=tcp"]) as (_, client):
        first, second = [(await client.post("/start", json={})).json()["iceConfig"]["iceServers"] for _ in range(2)]
    for servers in (first, second):
        (server,) = servers
        assert server["urls"] == "turn:127.0.0.1:3478?transport=tcp"
        digest = hmac.new(b"s3cret", server["username"].encode(), hashlib.sha1).digest()
        assert base64.b64decode(server["credential"]) == digest
    assert first[0]["username"] != second[0]["username"]


async def test_a_session_started_at_start_gets_its_body_and_id():
    async with api() as (engine, client):
        start = (await client.post("/start", json={"transport": "webrtc", "body": {"a": 1}})).json()
        reply = await client.post("/sessions/unknown/api/offer", json={"sdp": "v=0", "type": "offer"})
        assert reply.status_code == 404
        async with stand_in_workers(engine.endpoint, "w1") as (worker,), client_offer() as pc:
            await worker.register()
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            answer = (await client.post(f"/sessions/{start['sessionId']}/api/offer", json=offer)).json()
            await apply_answer(pc, answer)
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
        # A /start it took would only lead to an offer it refuses; a balancer offers the /start elsewhere.
        reply = await client.post("/start", json={}, headers={"Authorization": "Bearer api-secret"})
        assert (reply.status_code, reply.headers["Retry-After"]) == (503, "30")
        assert "draining" in reply.json()["detail"]


async def test_the_demo_page_is_served():
    async with api() as (_, client):
        assert "<html" in (await client.get("/")).text.lower()
        assert (await client.get("/static/demo.js")).status_code == 200


async def test_a_body_over_the_limit_is_413_before_it_is_parsed():
    async with api(max_request_body_bytes=4096) as (engine, client):
        big = b'{"sdp": "' + b"x" * 5000 + b'", "type": "offer"}'
        reply = await client.post("/api/offer", content=big, headers={"content-type": "application/json"})
        assert reply.status_code == 413 and "4096 bytes" in reply.json()["detail"]

        async def chunked():
            # No Content-Length: the body is counted as it arrives.
            for start in range(0, len(big), 1000):
                yield big[start : start + 1000]

        reply = await client.post("/api/offer", content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in reply.request.headers
        assert reply.status_code == 413
        assert engine.metrics.registry.get_sample_value("smallwebrtc_requests_refused_total", {"reason": "body_too_large"}) == 2
        assert (await client.post("/start", json={"transport": "webrtc"})).status_code == 200


async def test_an_offer_with_too_many_media_sections_is_400():
    async with api() as (engine, client), stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        with loopback_only():
            pc = client_pc()
            for _ in range(9):
                pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            await pc.close()
        reply = await client.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert reply.status_code == 400
        assert reply.json()["detail"] == "the offer has 9 media sections, more than the 8 taken"


def host_candidate(port: int) -> dict:
    return {"candidate": f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host", "sdp_mid": "0", "sdp_mline_index": 0}


async def test_candidates_past_a_limit_are_400_and_repeats_and_the_end_marker_are_free():
    async with (
        api(max_candidates_per_request=3, max_candidates_per_peer=6) as (engine, client),
        stand_in_workers(engine.endpoint, "w1") as (worker,),
    ):
        reply = await client.patch("/api/offer", json={"pc_id": "nobody", "candidates": [host_candidate(p) for p in range(4)]})
        assert reply.status_code == 400 and "more than 3 ICE candidates in one request" in reply.json()["detail"]

        await worker.register()
        async with client_offer() as pc:
            # Without the offer's own candidates, every one counted is trickled here.
            sdp = "".join(line for line in pc.localDescription.sdp.splitlines(True) if not line.startswith("a=candidate:"))
            pc_id = (await client.post("/api/offer", json={"sdp": sdp, "type": "offer"})).json()["pc_id"]

            async def trickle(*candidates) -> httpx.Response:
                return await client.patch("/api/offer", json={"pc_id": pc_id, "candidates": list(candidates)})

            first, second = [host_candidate(p) for p in (1, 2, 3)], [host_candidate(p) for p in (4, 5, 6)]
            assert (await trickle(*first)).status_code == 200
            assert (await trickle(*first, *first, END_OF_CANDIDATES, END_OF_CANDIDATES)).status_code == 200
            assert (await trickle(*second)).status_code == 200
            reply = await trickle(host_candidate(7))
            assert reply.status_code == 400
            assert reply.json()["detail"] == "more than 6 ICE candidates for one peer connection"
            # The session goes on.
            assert (await trickle(*second, END_OF_CANDIDATES)).json() == {"status": "success"}


async def test_start_is_rate_limited_per_client_address():
    async with api(start_rate_per_minute=2) as (engine, client):
        one, other = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
        for _ in range(2):
            assert (await client.post("/start", json={}, headers=one)).status_code == 200
        reply = await client.post("/start", json={}, headers=one)
        assert reply.status_code == 429 and int(reply.headers["Retry-After"]) >= 1
        assert engine.metrics.registry.get_sample_value("smallwebrtc_requests_refused_total", {"reason": "start_rate"}) == 1
        assert (await client.post("/start", json={}, headers=other)).status_code == 200


async def test_a_start_session_no_offer_used_expires_and_a_used_one_lasts_with_its_peer():
    async with api(start_session_ttl_s=0.5) as (engine, client), stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        # The offer is made first: gathering its candidates on a busy machine could outlast the sessions.
        async with client_offer() as pc:
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            unused = (await client.post("/start", json={})).json()["sessionId"]
            used = (await client.post("/start", json={})).json()["sessionId"]
            pc_id = (await client.post(f"/sessions/{used}/api/offer", json=offer)).json()["pc_id"]
            await asyncio.sleep(0.6)
            reply = await client.patch(f"/sessions/{used}/api/offer", json={"pc_id": pc_id, "candidates": [END_OF_CANDIDATES]})
            assert reply.json() == {"status": "success"}
            reply = await client.post(f"/sessions/{unused}/api/offer", json=offer)
            assert (reply.status_code, reply.json()["detail"]) == (404, f"unknown session {unused}")


async def test_lone_surrogates_are_4xx_not_500():
    async with api() as (_, client):
        for body in (
            r'{"sdp": "\ud800", "type": "offer"}',
            r'{"sdp": ["\udfff"], "type": "offer"}',
            r'{"sdp": "v=0", "type": "offer", "requestData": {"\ud800": 1}}',
        ):
            reply = await client.post("/api/offer", content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 422, body
        patch = r'{"pc_id": "\ud800", "candidates": []}'
        reply = await client.patch("/api/offer", content=patch, headers={"content-type": "application/json"})
        assert reply.status_code == 422 and "surrogate" in reply.text
        start = r'{"transport": "webrtc", "body": "\ud800"}'
        assert (await client.post("/start", content=start, headers={"content-type": "application/json"})).status_code == 422


async def test_a_pc_id_cannot_forge_a_log_line():
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        async with api() as (_, client):
            forged = "x\nERROR forged line"
            reply = await client.post("/api/offer", json={"sdp": "v=0", "type": "offer", "pc_id": forged})
            assert reply.status_code == 404
            reply = await client.patch("/api/offer", json={"pc_id": forged, "candidates": []})
            assert reply.status_code == 404
    finally:
        logger.remove(sink)
    logged = [line for line in lines if "x\\nERROR forged line" in line]
    assert len(logged) == 2 and all(line.count("\n") == 1 for line in logged)


async def test_with_an_admin_token_only_the_operator_sees_sessions_workers_and_the_schema():
    async with api(admin_token="admin-secret") as (engine, client), stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register()
        for path in ("/workers", "/metrics"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers={"Authorization": "Bearer admin-secret"})).status_code == 200
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 404
    async with api() as (_, client):
        # Without an admin token (development), all of it is open, as before.
        assert [(await client.get(path)).status_code for path in ("/workers", "/metrics", "/docs")] == [200, 200, 200]
