"""The HTTP side of the engine: the routes of the SmallWebRTC wire contract and the demo page."""

import hmac
import json
from pathlib import Path
from typing import Any

from aiortc.sdp import candidate_from_sdp
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from engine.common.settings import HostSettings
from engine.ice import EndOfCandidates, ice_servers_now
from engine.request_limits import (
    MAX_START_SESSIONS,
    START_FULL_RETRY_S,
    BodyLimit,
    ClientCORS,
    RateLimit,
    StartSessions,
    client_address,
)
from engine.sessions import DRAINING_DETAIL, DRAINING_RETRY_S, Engine, OfferRejected

STATIC_DIR = Path(__file__).parent / "static"
# What /start hands a client that asks for enableDefaultIceServers when the host has none, as Pipecat's runner does.
DEFAULT_CLIENT_ICE_SERVERS = [{"urls": ["stun:stun.l.google.com:19302"]}]


def _refuse_lone_surrogates(data: Any) -> Any:
    # "\ud800" is valid JSON but no text: it would fail wherever it is
    # encoded (a reply, a log line, the worker link), far from here.
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return data


class _Body(BaseModel):
    """A JSON request body: text only."""

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return _refuse_lone_surrogates(data)


class OfferRequest(_Body):
    """``POST /api/offer``: a new offer, a renegotiation (known pc_id) or a restart."""

    model_config = ConfigDict(populate_by_name=True)

    sdp: str
    type: str
    pc_id: str | None = None
    restart_pc: bool | None = False
    request_data: Any = Field(default=None, alias="requestData")


class IceCandidateModel(BaseModel):
    """One trickled candidate; an empty ``candidate`` marks the end of its m-line's candidates.

    Pipecat's clients name the m-line ``sdp_mid``/``sdp_mline_index``; the
    browser's own ``RTCIceCandidate.toJSON()`` names it ``sdpMid``/``sdpMLineIndex``.
    """

    candidate: str
    sdp_mid: str | None = Field(default=None, validation_alias=AliasChoices("sdp_mid", "sdpMid"))
    sdp_mline_index: int | None = Field(default=None, validation_alias=AliasChoices("sdp_mline_index", "sdpMLineIndex"))


class PatchRequest(_Body):
    """``PATCH /api/offer``: trickled candidates for a known pc_id."""

    pc_id: str
    candidates: list[IceCandidateModel]


class StartRequest(_Body):
    """``POST /start``: registers a session whose offer follows."""

    model_config = ConfigDict(extra="allow")

    transport: str = "webrtc"
    enableDefaultIceServers: bool = False
    body: Any = None


def _rejection(engine: Engine, e: OfferRejected) -> JSONResponse:
    engine.metrics.offers_refused.labels(str(e.status)).inc()
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)


def schema_routes(settings: HostSettings) -> dict:
    """FastAPI's /docs, /redoc and /openapi.json: for development only, off once an admin token is set."""
    return {"docs_url": None, "redoc_url": None, "openapi_url": None} if settings.admin_token else {}


def bearer_check(token: str, what: str):
    """A FastAPI dependency that requires ``Authorization: Bearer <token>`` (nothing when token is empty)."""

    def check(authorization: str | None = Header(default=None)) -> None:
        if not token:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, f"{what} needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})

    return check


def _to_rtc_candidates(candidates: list[IceCandidateModel], limit: int) -> list:
    # A repeated candidate (the web client trickles those its offer carried) costs nothing.
    distinct = {(c.candidate, c.sdp_mid, c.sdp_mline_index): c for c in candidates}
    if sum(1 for c in distinct.values() if c.candidate) > limit:
        raise HTTPException(400, f"more than {limit} ICE candidates in one request")
    parsed = []
    for c in distinct.values():
        if not c.candidate:
            parsed.append(EndOfCandidates(c.sdp_mid, c.sdp_mline_index))
            continue
        try:
            candidate = candidate_from_sdp(c.candidate.removeprefix("candidate:"))
        except Exception as e:  # aioice's parser asserts as well as raising
            raise HTTPException(400, f"invalid ICE candidate {c.candidate!r}: {e}") from e
        candidate.sdpMid = c.sdp_mid
        candidate.sdpMLineIndex = c.sdp_mline_index
        parsed.append(candidate)
    return parsed


def prebuilt_client() -> StaticFiles | None:
    """Pipecat's prebuilt web client, to serve at ``/client``; None when neither package is installed.

    ``pipecat-ai-prebuilt`` is the one Pipecat's runner serves (and a dependency
    of this host); ``pipecat-ai-small-webrtc-prebuilt``, its SmallWebRTC-only
    predecessor, is served where it is installed instead.
    """
    try:
        from pipecat_ai_prebuilt.frontend import PipecatPrebuiltUI

        return PipecatPrebuiltUI
    except ImportError:
        pass
    try:
        from pipecat_ai_small_webrtc_prebuilt.frontend import SmallWebRTCPrebuiltUI

        return SmallWebRTCPrebuiltUI
    except ImportError:
        return None


def create_app(engine: Engine, runner_body: Any = None) -> FastAPI:
    """The engine's HTTP API.

    Args:
        engine: The engine that owns the peers and workers.
        runner_body: The body a bot gets when its client sends none (``--runner-body``).
    """
    settings = engine.settings
    app = FastAPI(title="smallwebrtc-host", **schema_routes(settings))
    refused = engine.metrics.requests_refused
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_body_bytes, on_refused=refused.labels("body_too_large").inc
    )
    # Outermost, so that a refusal (413) reaches a client on another origin too.
    app.add_middleware(ClientCORS, allowed_origins=settings.allowed_origins)
    start_sessions = StartSessions(
        settings.start_session_ttl_s,
        lambda pc_id: pc_id in engine.peers and not engine.peers[pc_id].ended,
        id_prefix=engine.engine_id,
    )
    start_rate = RateLimit(settings.start_rate_per_minute)
    api_auth = [Depends(bearer_check(settings.api_token, "this API"))]
    admin_auth = Depends(bearer_check(settings.admin_token, "the admin API"))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> Response:
        # As FastAPI's own answer, but ASCII: the input it quotes back may hold a lone surrogate.
        return Response(json.dumps({"detail": jsonable_encoder(e.errors())}), 422, media_type="application/json")

    async def offer(request: OfferRequest, session_id: str | None, body: Any) -> JSONResponse | dict:
        try:
            return await engine.offer(
                sdp=request.sdp,
                type=request.type,
                pc_id=request.pc_id,
                restart_pc=bool(request.restart_pc),
                body=body,
                runner_session_id=session_id,
            )
        except OfferRejected as e:
            # repr(): the pc_id (in the detail too) is the client's, and must not forge a log line.
            logger.warning(f"offer (pc_id={request.pc_id!r}) rejected with {e.status}: {e.detail!r}")
            return _rejection(engine, e)

    async def patch(request: PatchRequest) -> JSONResponse | dict:
        candidates = _to_rtc_candidates(request.candidates, settings.max_candidates_per_request)
        try:
            await engine.add_candidates(request.pc_id, candidates)
        except OfferRejected as e:
            logger.warning(f"candidates for pc_id={request.pc_id!r} rejected with {e.status}: {e.detail!r}")
            return _rejection(engine, e)
        return {"status": "success"}

    @app.post("/api/offer", dependencies=api_auth)
    async def post_offer(request: OfferRequest):
        return await offer(request, None, runner_body if request.request_data is None else request.request_data)

    @app.patch("/api/offer", dependencies=api_auth)
    async def patch_offer(request: PatchRequest):
        return await patch(request)

    @app.post("/start", dependencies=api_auth)
    async def start(request: StartRequest, http: Request):
        if request.transport != "webrtc":
            raise HTTPException(400, f"Transport '{request.transport}' is not served here (only 'webrtc').")
        if engine.draining:
            # Its offer would be refused: a balancer or the front offers this /start to another host.
            raise HTTPException(503, DRAINING_DETAIL, {"Retry-After": str(DRAINING_RETRY_S)})
        retry_after = start_rate.retry_after(client_address(http))
        if retry_after:
            refused.labels("start_rate").inc()
            raise HTTPException(
                429, f"more than {settings.start_rate_per_minute} /start a minute", {"Retry-After": str(retry_after)}
            )
        # Pipecat's runner registers {} when the client sends no body.
        default_body = {} if runner_body is None else runner_body
        session_id = start_sessions.add(default_body if request.body is None else request.body)
        if session_id is None:
            logger.warning(f"/start refused: {MAX_START_SESSIONS} sessions registered and not yet expired")
            refused.labels("start_full").inc()
            raise HTTPException(503, "too many sessions started and not yet used", {"Retry-After": str(START_FULL_RETRY_S)})
        result: dict[str, Any] = {"sessionId": session_id}
        ice_servers = [s.to_client() for s in ice_servers_now(settings)]
        if not ice_servers and request.enableDefaultIceServers:
            ice_servers = DEFAULT_CLIENT_ICE_SERVERS
        if ice_servers:
            result["iceConfig"] = {"iceServers": ice_servers}
        return result

    @app.post("/sessions/{session_id}/api/offer", dependencies=api_auth)
    async def post_session_offer(session_id: str, request: OfferRequest):
        body = start_sessions.body(session_id)
        answer = await offer(request, session_id, request.request_data or body)
        if isinstance(answer, dict):
            start_sessions.used_by(session_id, answer["pc_id"])
        return answer

    @app.patch("/sessions/{session_id}/api/offer", dependencies=api_auth)
    async def patch_session_offer(session_id: str, request: PatchRequest):
        start_sessions.body(session_id)
        return await patch(request)

    @app.get("/status")
    async def status():
        return {"status": "ready", "transports": ["webrtc"]}

    @app.get("/healthz")
    async def healthz():
        """The engine process lives and serves HTTP."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Whether the host takes a new session now (503 with the reason when it does not)."""
        reason = engine.readiness()
        if reason:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return {"ready": True}

    # A session's pc_id is its secret: it is all a client shows to renegotiate, restart or
    # trickle to it (Pipecat's clients send nothing else), and binding it to the peer's DTLS
    # identity would refuse restart_pc, whose new connection has a new certificate. So only
    # the client (in its answer) and the operator (with the admin token) ever see one, and
    # the workers' pids and hostnames go only to the operator too.
    @app.get("/metrics", dependencies=[admin_auth])
    async def metrics():
        """Prometheus metrics."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/drain", dependencies=[admin_auth])
    async def admin_drain():
        """Stop taking sessions; the host exits once the running ones end (or the drain timeout)."""
        if not settings.admin_token:
            raise HTTPException(404, "the admin API is off: set admin_token to use it")
        engine.drain("POST /admin/drain")
        return {"draining": True, "sessions": engine.live_peer_count()}

    @app.get("/workers", dependencies=[admin_auth])
    async def workers():
        """The live workers, the sessions the engine placed on each, and what each last reported."""
        return {"engine_id": engine.engine_id, "workers": [w.describe() for w in engine.registry]}

    @app.get("/", include_in_schema=False)
    async def demo_page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    prebuilt = prebuilt_client()
    if prebuilt is not None:
        app.mount("/client", prebuilt, name="client")
    return app
