"""The HTTP side of the engine: the routes of the SmallWebRTC wire contract and the demo page."""

import hmac
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiortc.sdp import candidate_from_sdp
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from engine.sessions import Engine, OfferRejected

STATIC_DIR = Path(__file__).parent / "static"
# Sessions registered by /start and not yet ended, oldest forgotten first.
MAX_START_SESSIONS = 10_000


class OfferRequest(BaseModel):
    """``POST /api/offer``: a new offer, a renegotiation (known pc_id) or a restart."""

    model_config = ConfigDict(populate_by_name=True)

    sdp: str
    type: str
    pc_id: str | None = None
    restart_pc: bool | None = False
    request_data: Any = Field(default=None, alias="requestData")


class IceCandidateModel(BaseModel):
    """One trickled candidate; an empty ``candidate`` marks the end of candidates."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class PatchRequest(BaseModel):
    """``PATCH /api/offer``: trickled candidates for a known pc_id."""

    pc_id: str
    candidates: list[IceCandidateModel]


class StartRequest(BaseModel):
    """``POST /start``: registers a session whose offer follows."""

    model_config = ConfigDict(extra="allow")

    transport: str = "webrtc"
    enableDefaultIceServers: bool = False
    body: Any = None


def _rejection(engine: Engine, e: OfferRejected) -> JSONResponse:
    engine.metrics.offers_refused.labels(str(e.status)).inc()
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)


def bearer_check(token: str, what: str):
    """A FastAPI dependency that requires ``Authorization: Bearer <token>`` (nothing when token is empty)."""

    def check(authorization: str | None = Header(default=None)) -> None:
        if not token:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, f"{what} needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})

    return check


def _to_rtc_candidates(candidates: list[IceCandidateModel]) -> list:
    parsed = []
    for c in candidates:
        if not c.candidate:
            # End of candidates (RFC 8840): aiortc takes None.
            parsed.append(None)
            continue
        try:
            candidate = candidate_from_sdp(c.candidate.removeprefix("candidate:"))
        except Exception as e:  # aioice's parser asserts as well as raising
            raise HTTPException(400, f"invalid ICE candidate {c.candidate!r}: {e}") from e
        candidate.sdpMid = c.sdp_mid
        candidate.sdpMLineIndex = c.sdp_mline_index
        parsed.append(candidate)
    return parsed


def create_app(engine: Engine) -> FastAPI:
    """The engine's HTTP API.

    Args:
        engine: The engine that owns the peers and workers.
    """
    app = FastAPI(title="smallwebrtc-host")
    start_sessions: OrderedDict[str, Any] = OrderedDict()
    api_auth = [Depends(bearer_check(engine.settings.api_token, "this API"))]
    admin_auth = Depends(bearer_check(engine.settings.admin_token, "the admin API"))

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
            logger.warning(f"offer (pc_id={request.pc_id}) rejected with {e.status}: {e.detail}")
            return _rejection(engine, e)

    async def patch(request: PatchRequest) -> JSONResponse | dict:
        candidates = _to_rtc_candidates(request.candidates)
        try:
            await engine.add_candidates(request.pc_id, candidates)
        except OfferRejected as e:
            logger.warning(f"candidates for pc_id={request.pc_id} rejected with {e.status}: {e.detail}")
            return _rejection(engine, e)
        return {"status": "success"}

    @app.post("/api/offer", dependencies=api_auth)
    async def post_offer(request: OfferRequest):
        return await offer(request, None, request.request_data)

    @app.patch("/api/offer", dependencies=api_auth)
    async def patch_offer(request: PatchRequest):
        return await patch(request)

    @app.post("/start", dependencies=api_auth)
    async def start(request: StartRequest):
        if request.transport != "webrtc":
            raise HTTPException(400, f"Transport '{request.transport}' is not served here (only 'webrtc').")
        session_id = str(uuid.uuid4())
        start_sessions[session_id] = request.body if request.body is not None else {}
        while len(start_sessions) > MAX_START_SESSIONS:
            start_sessions.popitem(last=False)
        result: dict[str, Any] = {"sessionId": session_id}
        if engine.settings.ice_servers:
            result["iceConfig"] = {"iceServers": [s.to_client() for s in engine.settings.ice_servers]}
        return result

    def start_session(session_id: str) -> Any:
        if session_id not in start_sessions:
            raise HTTPException(404, f"unknown session {session_id}")
        return start_sessions[session_id]

    @app.post("/sessions/{session_id}/api/offer", dependencies=api_auth)
    async def post_session_offer(session_id: str, request: OfferRequest):
        body = start_session(session_id)
        return await offer(request, session_id, request.request_data or body)

    @app.patch("/sessions/{session_id}/api/offer", dependencies=api_auth)
    async def patch_session_offer(session_id: str, request: PatchRequest):
        start_session(session_id)
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

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/drain", dependencies=[admin_auth])
    async def admin_drain():
        """Stop taking sessions; the host exits once the running ones end (or the drain timeout)."""
        if not engine.settings.admin_token:
            raise HTTPException(404, "the admin API is off: set admin_token to use it")
        engine.drain("POST /admin/drain")
        return {"draining": True, "sessions": engine.live_peer_count()}

    @app.get("/workers")
    async def workers():
        """The live workers, the sessions the engine placed on each, and what each last reported."""
        return {"engine_id": engine.engine_id, "workers": [w.describe() for w in engine.registry]}

    @app.get("/", include_in_schema=False)
    async def demo_page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Pipecat's prebuilt web client at /client, as Pipecat's runner serves it, when installed.
    try:
        from pipecat_ai_small_webrtc_prebuilt.frontend import (
            SmallWebRTCPrebuiltUI as PrebuiltUI,
        )
    except ImportError:
        try:
            from pipecat_ai_prebuilt.frontend import PipecatPrebuiltUI as PrebuiltUI
        except ImportError:
            PrebuiltUI = None
    if PrebuiltUI is not None:
        app.mount("/client", PrebuiltUI, name="client")
    return app
