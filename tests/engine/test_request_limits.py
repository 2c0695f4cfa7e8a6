"""What one client may ask of the HTTP API: the body bound, the /start rate per address, and /start sessions that expire."""

import uuid

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from engine import request_limits
from engine.request_limits import BodyLimit, RateLimit, StartSessions, client_address


def echo_app(max_bytes: int) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    @app.post("/echo")
    async def echo(request: Request):
        return {"size": len(await request.body()), "client": client_address(request)}

    return app


async def test_a_body_over_the_limit_is_refused_declared_or_streamed():
    transport = httpx.ASGITransport(app=echo_app(10))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.post("/echo", content=b"x" * 10)).json()["size"] == 10
        assert (await client.post("/echo", content=b"x" * 11)).status_code == 413

        async def chunks():
            for _ in range(3):
                yield b"xxxx"

        assert (await client.post("/echo", content=chunks())).status_code == 413


async def test_only_a_proxy_on_loopback_names_the_client():
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=echo_app(100), client=("127.0.0.1", 5000)), base_url="http://api"
    ) as behind_proxy:
        reply = await behind_proxy.post("/echo", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
        assert reply.json()["client"] == "203.0.113.9"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=echo_app(100), client=("203.0.113.50", 5000)), base_url="http://api"
    ) as direct:
        reply = await direct.post("/echo", headers={"X-Forwarded-For": "198.51.100.1"})
        assert reply.json()["client"] == "203.0.113.50"


def test_the_rate_is_per_address_a_minutes_worth_at_once():
    limit = RateLimit(per_minute=3)
    assert [limit.retry_after("a") for _ in range(4)] == [0, 0, 0, 20]
    assert limit.retry_after("b") == 0
    assert RateLimit(per_minute=0).retry_after("a") == 0


def test_start_sessions_expire_unless_a_live_peer_uses_them(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(request_limits.time, "monotonic", lambda: now[0])
    live = {"pc-1"}
    sessions = StartSessions(ttl_s=10, peer_lives=lambda pc_id: pc_id in live, id_prefix="h1-42-abcdef")
    unused, used = sessions.add({"a": 1}), sessions.add({"b": 2})
    sessions.used_by(used, "pc-1")
    now[0] += 11
    with pytest.raises(HTTPException) as refused:
        sessions.body(unused)
    assert refused.value.status_code == 404
    assert sessions.body(used) == {"b": 2}
    live.clear()
    now[0] += 11
    with pytest.raises(HTTPException):
        sessions.body(used)


def test_a_start_session_id_names_its_engine_and_is_unguessable():
    sessions = StartSessions(ttl_s=10, peer_lives=lambda _: False, id_prefix="h1-42-abcdef")
    first, second = sessions.add({}), sessions.add({})
    prefix, _, rest = first.partition("h1-42-abcdef-")
    assert prefix == "" and uuid.UUID(rest).version == 4
    assert first != second


def test_a_full_start_table_refuses_rather_than_evicting(monkeypatch):
    monkeypatch.setattr(request_limits, "MAX_START_SESSIONS", 2)
    sessions = StartSessions(ttl_s=10, peer_lives=lambda _: False, id_prefix="h1-42-abcdef")
    first = sessions.add({})
    assert sessions.add({}) is not None and sessions.add({}) is None
    assert sessions.body(first) == {}
