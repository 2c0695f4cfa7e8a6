"""The HTTP routes of the wire contract against the real host, bad input included."""

import aiohttp
import pytest

from tests.support.client import TestPeer
from tests.support.host import HostProcess, request


@pytest.fixture(scope="module")
def host():
    with HostProcess(1, "--ice-servers", "stun:127.0.0.1:3478") as running:
        yield running


async def test_status(host):
    assert await request("GET", f"{host.base_url}/status") == (200, {"status": "ready", "transports": ["webrtc"]})


async def test_start_hands_out_the_configured_ice_servers(host):
    status, body = await request("POST", f"{host.base_url}/start", json={"transport": "webrtc", "body": {"a": 1}})
    assert status == 200
    assert body["sessionId"]
    assert body["iceConfig"] == {"iceServers": [{"urls": "stun:127.0.0.1:3478"}]}


async def test_start_refuses_other_transports(host):
    status, body = await request("POST", f"{host.base_url}/start", json={"transport": "daily"})
    assert status == 400 and "daily" in body["detail"]


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ({"sdp": "garbage", "type": "offer"}, 400, "invalid offer SDP"),
        ({"sdp": "v=0\r\n", "type": "answer"}, 400, "expected an SDP of type 'offer'"),
        ({"type": "offer"}, 422, "sdp"),
        ({"sdp": "v=0", "type": "offer", "pc_id": "no-such-peer"}, 404, "no session with pc_id no-such-peer"),
    ],
)
async def test_bad_offers_get_a_clear_4xx(host, payload, status, words):
    got_status, body = await request("POST", f"{host.base_url}/api/offer", json=payload)
    assert got_status == status
    assert words in str(body)


async def test_malformed_json_gets_422(host):
    status, body = await request(
        "POST", f"{host.base_url}/api/offer", data="{not json", headers={"content-type": "application/json"}
    )
    assert status == 422 and "JSON" in str(body)


async def test_oversized_bodies_get_413_and_lone_surrogates_a_4xx(host):
    status, body = await request("POST", f"{host.base_url}/api/offer", json={"sdp": "x" * 300_000, "type": "offer"})
    assert status == 413 and "262144 bytes" in body["detail"]
    surrogate = r'{"sdp": "\ud800", "type": "offer", "pc_id": "\udfff"}'
    status, _ = await request(
        "POST", f"{host.base_url}/api/offer", data=surrogate, headers={"content-type": "application/json"}
    )
    assert status == 422
    assert (await request("GET", f"{host.base_url}/status"))[0] == 200


async def test_patch_unknown_pc_id_is_404(host):
    status, body = await request("PATCH", f"{host.base_url}/api/offer", json={"pc_id": "nope", "candidates": []})
    assert status == 404 and "nope" in body["detail"]


async def test_unknown_start_session_is_404(host):
    status, _ = await request("POST", f"{host.base_url}/sessions/unknown/api/offer", json={"sdp": "v=0", "type": "offer"})
    assert status == 404


async def test_trickled_candidates_end_marker_duplicates_and_garbage(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect()
        candidates = peer.local_candidates()
        assert candidates
        end_marker = {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}
        status, body = await peer.patch_candidates(candidates + candidates + [end_marker])
        assert (status, body) == (200, {"status": "success"})
        status, body = await peer.patch_candidates([{"candidate": "candidate:garbage", "sdp_mid": "0", "sdp_mline_index": 0}])
        assert status == 400 and "invalid ICE candidate" in body["detail"]
        # The session survives all of it.
        await peer.send_app_message({"type": "still-there"})
        await peer.wait_for_message(lambda m: m.get("echo") == {"type": "still-there"})


async def test_the_demo_page_is_served(host):
    status, body = await request("GET", f"{host.base_url}/")
    assert status == 200 and "<html" in body.lower()
    status, _ = await request("GET", f"{host.base_url}/static/demo.js")
    assert status == 200


async def test_health_readiness_and_metrics(host):
    assert await request("GET", f"{host.base_url}/healthz") == (200, {"status": "ok"})
    assert await request("GET", f"{host.base_url}/readyz") == (200, {"ready": True})
    async with TestPeer(host.base_url) as peer:
        await peer.connect()
        await peer.wait_for_video_frames(3)
        status, text = await request("GET", f"{host.base_url}/metrics")
    assert status == 200
    for name in (
        "smallwebrtc_sessions_active",
        "smallwebrtc_workers_live 1.0",
        'smallwebrtc_frames_total{direction="in",kind="video"}',
        'smallwebrtc_frames_total{direction="out",kind="audio"}',
        "smallwebrtc_session_setup_seconds_count",
        "smallwebrtc_time_to_first_media_seconds_count",
        "smallwebrtc_ipc_queue_depth{",
        "smallwebrtc_event_loop_lag_ms",
        "smallwebrtc_worker_event_loop_lag_ms{",
    ):
        assert name in text, name


@pytest.fixture(scope="module")
def guarded_host():
    tokens = {"SMALLWEBRTC_HOST_API_TOKEN": "api-secret", "SMALLWEBRTC_HOST_ADMIN_TOKEN": "admin-secret"}
    with HostProcess(1, env=tokens) as running:
        yield running


async def test_the_api_token_guards_session_routes(guarded_host):
    url = guarded_host.base_url
    status, body = await request("POST", f"{url}/start", json={})
    assert status == 401 and "Bearer" in body["detail"]
    status, _ = await request("POST", f"{url}/start", json={}, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, body = await request("POST", f"{url}/start", json={}, headers={"Authorization": "Bearer api-secret"})
    assert status == 200 and body["sessionId"]
    status, _ = await request("POST", f"{url}/api/offer", json={"sdp": "v=0", "type": "offer"})
    assert status == 401
    assert (await request("GET", f"{url}/status"))[0] == 200


async def test_admin_drain(guarded_host):
    url = guarded_host.base_url
    assert (await request("POST", f"{url}/admin/drain", headers={"Authorization": "Bearer api-secret"}))[0] == 401
    status, body = await request("POST", f"{url}/admin/drain", headers={"Authorization": "Bearer admin-secret"})
    assert status == 200 and body["draining"] is True
    # With no session left, the drained host exits by itself, cleanly.
    assert guarded_host.process.wait(10) == 0


async def test_a_full_host_refuses_with_503_and_keeps_its_sessions():
    with HostProcess(1, env={"SMALLWEBRTC_HOST_WORKER_CAPACITY": "1"}) as host:
        async with TestPeer(host.base_url) as admitted:
            await admitted.connect()
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{host.base_url}/api/offer", json={"sdp": admitted.pc.localDescription.sdp, "type": "offer"}) as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"]
                    assert "capacity" in (await r.json())["detail"]
            assert (await request("GET", f"{host.base_url}/readyz"))[0] == 503
            await admitted.wait_for_video_frames(10)
