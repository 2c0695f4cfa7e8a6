"""The flags and environment of Pipecat's development runner, on the real host: a bot's command line and habits carry over."""

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.client import TestPeer
from tests.support.host import HostProcess, request, request_with_headers

API_TOKEN = "api-secret"
AUTHORIZATION = {"Authorization": f"Bearer {API_TOKEN}"}
APP_ORIGIN = "https://app.example"
TURN = {"urls": "turn:127.0.0.1:3478", "username": "user", "credential": "secret"}


def video_size(peer: TestPeer) -> tuple[int, int]:
    """Width and height of the last picture the bot sent the peer."""
    height, width = peer.received_video[-1][1].shape[:2]
    return width, height


def environment_of(pid: int) -> dict[str, str]:
    """A process's environment, as /proc shows it."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


async def test_a_runner_command_line_serves_as_it_is(tmp_path):
    # What `python bot.py -t webrtc --runner-body body.yaml -v` would be given.
    body = tmp_path / "body.yaml"
    body.write_text("video_width: 160\nvideo_height: 120\n")
    with HostProcess(1, "-t", "webrtc", "--runner-body", str(body), "-v") as host:
        status, started = await request("POST", f"{host.base_url}/start", json={"transport": "webrtc"})
        assert status == 200
        async with (
            TestPeer(host.base_url) as without_body,
            TestPeer(host.base_url, offer_path=f"/sessions/{started['sessionId']}/api/offer") as started_without_body,
            TestPeer(host.base_url) as with_body,
        ):
            await asyncio.gather(
                without_body.connect(),
                started_without_body.connect(),
                with_body.connect(request_data={"video_width": 200, "video_height": 150}),
            )
            await asyncio.gather(
                *(peer.wait_for_video_frames(3) for peer in (without_body, started_without_body, with_body))
            )
            # The demo bot draws at the size its body asks for: the runner body's, unless the client sent one.
            assert video_size(without_body) == video_size(started_without_body) == (160, 120)
            assert video_size(with_body) == (200, 150)
        (worker_pid,) = host.worker_pids().values()
        assert environment_of(worker_pid).get("ENV") == "local"
    assert "| DEBUG    |" in host.log()


@pytest.mark.parametrize(
    "args, env, servers",
    [
        (["--ice-servers", "stun:127.0.0.1:3478", json.dumps(TURN)], {}, [{"urls": "stun:127.0.0.1:3478"}, TURN]),
        ([], {"PIPECAT_ICE_SERVERS": "stun:127.0.0.1:3478,stun:127.0.0.1:3479"},
         [{"urls": "stun:127.0.0.1:3478"}, {"urls": "stun:127.0.0.1:3479"}]),
        # The flag wins over the environment.
        (["--ice-servers", "stun:127.0.0.1:3480"], {"PIPECAT_ICE_SERVERS": json.dumps([TURN])},
         [{"urls": "stun:127.0.0.1:3480"}]),
    ],
    ids=["flag", "environment", "flag-over-environment"],
)
async def test_ice_servers_as_the_runner_takes_them_reach_the_client(args, env, servers):
    with HostProcess(0, *args, env=env) as host:
        for ask_for_default in (False, True):
            status, started = await request(
                "POST", f"{host.base_url}/start", json={"enableDefaultIceServers": ask_for_default}
            )
            assert status == 200 and started["iceConfig"] == {"iceServers": servers}


@pytest.fixture(scope="module", params=[1, 2], ids=["one-engine", "two-engines"])
def guarded_host(request):
    """A host whose session routes need the API token (no workers: nothing here connects)."""
    with HostProcess(0, "--engines", str(request.param), env={"SMALLWEBRTC_HOST_API_TOKEN": API_TOKEN}) as running:
        yield running


async def test_enable_default_ice_servers_gets_the_runners_public_stun(guarded_host):
    url = f"{guarded_host.base_url}/start"
    status, started = await request("POST", url, json={"enableDefaultIceServers": True}, headers=AUTHORIZATION)
    assert status == 200
    assert started["iceConfig"] == {"iceServers": [{"urls": ["stun:stun.l.google.com:19302"]}]}
    status, started = await request("POST", url, json={}, headers=AUTHORIZATION)
    assert status == 200 and "iceConfig" not in started


def preflight(origin: str, method: str = "POST") -> dict:
    """What a browser asks before it sends a request with an Authorization header and a JSON body."""
    return {
        "headers": {
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        }
    }


async def test_a_browser_client_on_another_origin_starts_a_session(guarded_host):
    url = guarded_host.base_url
    status, headers, _ = await request_with_headers("OPTIONS", f"{url}/start", **preflight(APP_ORIGIN))
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
    status, headers, started = await request_with_headers(
        "POST", f"{url}/start", json={"transport": "webrtc"}, headers={"Origin": APP_ORIGIN, **AUTHORIZATION}
    )
    assert status == 200 and started["sessionId"]
    assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    for path, method in (
        (f"/sessions/{started['sessionId']}/api/offer", "POST"),
        (f"/sessions/{started['sessionId']}/api/offer", "PATCH"),
        ("/api/offer", "POST"),
        ("/api/offer", "PATCH"),
    ):
        status, headers, _ = await request_with_headers("OPTIONS", url + path, **preflight(APP_ORIGIN, method))
        assert status == 200 and headers["Access-Control-Allow-Origin"] == APP_ORIGIN, path
    # A refusal reaches the page too, so it can say why.
    status, headers, _ = await request_with_headers(
        "POST", f"{url}/api/offer", json={"sdp": "v=0", "type": "offer"}, headers={"Origin": APP_ORIGIN}
    )
    assert status == 401 and headers["Access-Control-Allow-Origin"] == APP_ORIGIN


async def test_the_operators_routes_answer_no_other_origin(guarded_host):
    for path in ("/workers", "/metrics", "/admin/drain"):
        _, headers, _ = await request_with_headers("OPTIONS", guarded_host.base_url + path, **preflight(APP_ORIGIN))
        assert "Access-Control-Allow-Origin" not in headers, path
    _, headers, _ = await request_with_headers("GET", f"{guarded_host.base_url}/workers", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    "args, env",
    [
        (["--allowed-origins", APP_ORIGIN], {}),
        ([], {"PIPECAT_ALLOWED_ORIGINS": f"https://other.example, {APP_ORIGIN}"}),
        # The flag wins over the environment.
        (["--allowed-origins", APP_ORIGIN], {"PIPECAT_ALLOWED_ORIGINS": "https://elsewhere.example"}),
    ],
    ids=["flag", "environment", "flag-over-environment"],
)
async def test_allowed_origins_let_in_only_those(args, env):
    with HostProcess(0, *args, env=env) as host:
        status, headers, _ = await request_with_headers("OPTIONS", f"{host.base_url}/start", **preflight(APP_ORIGIN))
        assert status == 200 and headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        for origin in ("https://evil.example", "https://elsewhere.example"):
            status, headers, _ = await request_with_headers(
                "OPTIONS", f"{host.base_url}/start", **preflight(origin)
            )
            assert status == 400 and "Access-Control-Allow-Origin" not in headers, origin
