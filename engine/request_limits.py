"""What one client may ask of the HTTP API: a bounded body, a rate of /start calls, /start sessions that expire, and from which origins.

Shared by an engine's API (``engine.signaling``) and the front of several
engines (``engine.front``), so both bound the same things the same way.
"""

import ipaddress
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Sessions registered by /start held at once, a last bound behind their expiry
# and the rate limit: past it /start answers 503, live entries are never evicted.
MAX_START_SESSIONS = 10_000
# What a full /start table asks a client to wait.
START_FULL_RETRY_S = 10
# The routes a browser client calls. Only these answer other origins: the
# operator's (/workers, /metrics, /admin) show every session's pc_id, and a
# page on another origin must not read them from a developer's open host.
CLIENT_ROUTES = re.compile(r"/(start|status|api/offer|sessions/[^/]+/api/offer)")


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets 413 before anything parses it.

    A Content-Length over the limit is refused before the body is read; a body
    without one (chunked) is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None] = lambda: None):
        """Wrap ``app``; ``on_refused`` is called for each request refused."""
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the request body is over {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.on_refused()
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                self.on_refused()
                # The route reading the body answers it with 413 (FastAPI
                # re-raises an HTTPException met while parsing).
                raise HTTPException(413, detail)
            return message

        await self.app(scope, counted, send)


class ClientCORS:
    """ASGI middleware: CORS on the client routes as Pipecat's runner answers it, any origin unless some are listed.

    A browser client served from another origin (a web app, Pipecat's
    playground) can then POST ``/start`` with an ``Authorization`` header and
    its offers: the preflight passes for the allowed origins, and only for them.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str]):
        """Wrap ``app``; an empty ``allowed_origins`` allows every origin."""
        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=allowed_origins or ["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client_route = scope["type"] == "http" and CLIENT_ROUTES.fullmatch(scope["path"])
        await (self.cors if client_route else self.app)(scope, receive, send)


def client_address(request: Request) -> str:
    """The client's address; a proxy on loopback (the front of several engines, say) names it in X-Forwarded-For."""
    direct = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for")
    try:
        behind_proxy = ipaddress.ip_address(direct).is_loopback
    except ValueError:
        behind_proxy = False
    if forwarded and behind_proxy:
        # The last address is the one the nearest proxy saw.
        return forwarded.split(",")[-1].strip()
    return direct


class RateLimit:
    """A token bucket per client address: ``per_minute`` calls a minute, a minute's worth at once."""

    def __init__(self, per_minute: int):
        """Initialize the limit; 0 lets every call through."""
        self._per_minute = per_minute
        # address -> (tokens left, when counted), the least recently counted first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """0 when ``address`` may call now (the call is counted), else the seconds until it may."""
        if not self._per_minute:
            return 0
        now = time.monotonic()
        # A bucket untouched for a minute is full again: as good as none.
        while self._buckets and now - next(iter(self._buckets.values()))[1] >= 60:
            self._buckets.popitem(last=False)
        per_s = self._per_minute / 60
        tokens, counted = self._buckets.pop(address, (self._per_minute, now))
        tokens = min(self._per_minute, tokens + (now - counted) * per_s)
        if tokens < 1:
            self._buckets[address] = (tokens, now)
            return math.ceil((1 - tokens) / per_s)
        self._buckets[address] = (tokens - 1, now)
        return 0


@dataclass
class _Started:
    body: Any
    expires: float
    pc_ids: set[str] = field(default_factory=set)


class StartSessions:
    """Sessions registered by ``/start``: one no live peer uses expires ``ttl_s`` after it was registered."""

    def __init__(self, ttl_s: float, peer_lives: Callable[[str], bool], id_prefix: str):
        """Initialize the table.

        Args:
            ttl_s: How long an unused session is kept.
            peer_lives: Whether the peer with a pc_id has not ended.
            id_prefix: What starts every session id (the engine's id, so a front or balancer finds the owner).
        """
        self._ttl_s = ttl_s
        self._id_prefix = id_prefix
        self._peer_lives = peer_lives
        # In order of expiry.
        self._entries: OrderedDict[str, _Started] = OrderedDict()

    def add(self, body: Any) -> str | None:
        """Register a session; its id, or None when ``MAX_START_SESSIONS`` are held."""
        self._expire()
        if len(self._entries) >= MAX_START_SESSIONS:
            return None
        session_id = f"{self._id_prefix}-{uuid.uuid4()}"
        self._entries[session_id] = _Started(body, time.monotonic() + self._ttl_s)
        return session_id

    def body(self, session_id: str) -> Any:
        """The body registered with the session.

        Raises:
            HTTPException: 404 if there is no such session (or it expired).
        """
        self._expire()
        if session_id not in self._entries:
            raise HTTPException(404, f"unknown session {session_id}")
        return self._entries[session_id].body

    def used_by(self, session_id: str, pc_id: str) -> None:
        """The peer ``pc_id`` runs under the session: it lasts while that peer lives."""
        if session_id in self._entries:
            self._entries[session_id].pc_ids.add(pc_id)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            session_id, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            entry.pc_ids = {pc_id for pc_id in entry.pc_ids if self._peer_lives(pc_id)}
            if not entry.pc_ids:
                del self._entries[session_id]
                continue
            entry.expires = now + self._ttl_s
            self._entries.move_to_end(session_id)
