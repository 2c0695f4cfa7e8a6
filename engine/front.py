"""The HTTP front of a host with several engines: it answers on the public address and hands every request to the engine that owns it.

- a new offer or ``/start``: the next engine in turn (one that is full or
  draining, 503, or does not answer passes the offer to the next);
- anything with a ``pc_id`` (renegotiation, ``restart_pc``, ``PATCH``): the
  engine whose id starts the pc_id;
- ``/sessions/{id}/...``: the engine whose id starts the session id (that
  engine answered its ``/start``), so this process keeps no table of sessions;
- ``/workers``, ``/readyz``, ``/metrics``: every engine's, together (each
  metric labelled with its ``engine``); ``/admin/drain``: every engine;
- anything else (the demo page, the web client): the first engine.

Only signaling crosses this process; media flows between each peer and its engine.
"""

import asyncio
import json

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from engine.common.settings import HostSettings
from engine.engine_pool import EnginePool, Shard
from engine.request_limits import BodyLimit, ClientCORS, client_address
from engine.signaling import schema_routes

# A signaling request waits this long for its engine (an offer waits for ICE gathering).
FORWARD_TIMEOUT_S = 120.0
# Headers about one hop's connection or body encoding, not the request (RFC 9110 7.6.1).
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
    # Set anew to the client this process saw: a client's own is not to be believed.
    "x-forwarded-for",
    # This process answers CORS for the public address; an engine adding its own would double it.
    "origin",
})


def _pc_id_of(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("pc_id")
    except (ValueError, AttributeError):
        return None  # the engine answers it with its own 422
    return value if isinstance(value, str) else None


def _merged_metrics(texts: dict[str, str]) -> bytes:
    """Every engine's Prometheus exposition as one, each sample labelled with its ``engine``."""
    families: dict[str, object] = {}
    for engine_id, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, family)
            samples = [sample._replace(labels={**sample.labels, "engine": engine_id}) for sample in family.samples]
            if merged is family:
                family.samples = samples
            else:
                merged.samples.extend(samples)

    class _Collected:
        def collect(self):
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected())
    return generate_latest(registry)


def create_front_app(pool: EnginePool, client: httpx.AsyncClient, settings: HostSettings) -> FastAPI:
    """The HTTP API of a host with several engines: every route of one engine, handed to the engine that owns it.

    Args:
        pool: The engines.
        client: The HTTP client requests are forwarded with.
        settings: Host settings (the body size limit, the allowed origins).
    """
    app = FastAPI(title="smallwebrtc-host", **schema_routes(settings))
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ClientCORS, allowed_origins=settings.allowed_origins)
    def no_engine() -> JSONResponse:
        return JSONResponse({"detail": "no engine is running"}, status_code=503, headers={"Retry-After": "2"})

    async def forward(shard: Shard, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        # The engine limits /start by the client's address, not this process's.
        headers["x-forwarded-for"] = client_address(request)
        try:
            reply = await client.request(
                request.method, shard.url + request.url.path, params=request.query_params, headers=headers, content=body
            )
        except httpx.HTTPError as e:
            logger.warning(f"{shard.slot.name} did not answer {request.method} {request.url.path}: {e}")
            return JSONResponse({"detail": f"engine {shard.engine_id} did not answer"}, status_code=502)
        headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(reply.content, reply.status_code, headers=headers)

    async def first_taker(request: Request, body: bytes) -> Response:
        """Offer a new session to the engines in turn; one that is full, draining (503) or gone (502) passes it on."""
        reply: Response = no_engine()
        for shard in pool.in_turn():
            reply = await forward(shard, request, body)
            if reply.status_code not in (502, 503):
                return reply
        return reply

    @app.api_route("/api/offer", methods=["POST", "PATCH"])
    async def offer(request: Request):
        body = await request.body()
        pc_id = _pc_id_of(body)
        if pc_id is None and request.method == "POST":
            return await first_taker(request, body)
        shard = pool.owner(pc_id)
        # An unknown pc_id: any engine answers it with its 404.
        shard = shard or next(iter(pool.live()), None)
        return await forward(shard, request, body) if shard else no_engine()

    @app.post("/start")
    async def start(request: Request):
        return await first_taker(request, await request.body())

    @app.api_route("/sessions/{session_id}/api/offer", methods=["POST", "PATCH"])
    async def session_offer(session_id: str, request: Request):
        body = await request.body()
        # An unknown session: any engine answers it with its 404.
        shard = pool.owner(session_id) or next(iter(pool.live()), None)
        return await forward(shard, request, body) if shard else no_engine()

    async def from_every_engine(path: str, request: Request | None = None) -> dict[str, httpx.Response]:
        live = pool.live()
        # The operator-only routes: each engine checks the caller's admin token.
        headers = {"Authorization": request.headers["Authorization"]} if request and "Authorization" in request.headers else {}
        replies = await asyncio.gather(
            *(client.get(shard.url + path, headers=headers) for shard in live), return_exceptions=True
        )
        return {s.engine_id: r for s, r in zip(live, replies) if isinstance(r, httpx.Response)}

    def refused(replies: dict[str, httpx.Response]) -> Response | None:
        """An engine's refusal of the caller (its token), passed on as it is."""
        reply = next((r for r in replies.values() if r.status_code == 401), None)
        return Response(reply.content, 401, headers={"WWW-Authenticate": "Bearer"}, media_type="application/json") if reply else None

    @app.get("/workers")
    async def workers(request: Request):
        """Every engine's live workers."""
        replies = await from_every_engine("/workers", request)
        if (refusal := refused(replies)) is not None:
            return refusal
        return {
            "engines": list(replies),
            "workers": [
                {**worker, "engine_id": engine_id}
                for engine_id, reply in replies.items()
                for worker in reply.json()["workers"]
            ],
        }

    @app.get("/readyz")
    async def readyz():
        """Ready while any engine takes a new session."""
        replies = await from_every_engine("/readyz")
        if any(reply.status_code == 200 for reply in replies.values()):
            return {"ready": True}
        reasons = {engine_id: reply.json().get("reason") for engine_id, reply in replies.items()}
        return JSONResponse({"ready": False, "reason": reasons or "no engine is running"}, status_code=503)

    @app.get("/healthz")
    async def healthz():
        """This process lives and serves HTTP."""
        return {"status": "ok", "engines": len(pool.live())}

    @app.get("/metrics")
    async def metrics(request: Request):
        """Every engine's Prometheus metrics, labelled with its ``engine``."""
        replies = await from_every_engine("/metrics", request)
        if (refusal := refused(replies)) is not None:
            return refusal
        merged = _merged_metrics({engine_id: reply.text for engine_id, reply in replies.items()})
        return Response(merged, media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/drain")
    async def admin_drain(request: Request):
        """Drain every engine (each checks the admin token)."""
        body = await request.body()
        replies = [await forward(shard, request, body) for shard in pool.live()]
        return replies[0] if replies else no_engine()

    @app.api_route("/{path:path}", methods=["GET", "HEAD"])
    async def anything_else(path: str, request: Request):
        live = pool.live()
        return await forward(live[0], request, b"") if live else no_engine()

    return app
