"""Several engine processes behind one address, for hosts with more cores than one engine can feed.

One engine's event loop fills a core at a handful of A/V sessions while the
workers scale with the cores (README, Performance). With ``engines`` > 1,
``serve`` runs that many engines, each a full ``serve`` with its share of the
local workers on a private loopback port, and answers on the public address
itself, handing every request to the engine that owns it:

- a new offer or ``/start``: the next engine in turn (one that is full or
  draining, 503, or does not answer passes the offer to the next);
- anything with a ``pc_id`` (renegotiation, ``restart_pc``, ``PATCH``): the
  engine whose id starts the pc_id;
- ``/sessions/{id}/...``: the engine that registered the session at ``/start``;
- ``/workers``, ``/readyz``, ``/metrics``: every engine's, together (each
  metric labelled with its ``engine``); ``/admin/drain``: every engine;
- anything else (the demo page, the web client): the first engine.

Only signaling crosses this process; media flows between each peer and its engine.
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from engine.common.settings import HostSettings
from engine.signaling import MAX_START_SESSIONS
from engine.supervisor import POLL_S, ProcessSlot, stop_process

# How long an engine may take to start and have its workers join.
ENGINE_START_TIMEOUT_S = 60.0
# A signaling request waits this long for its engine (an offer waits for ICE gathering).
FORWARD_TIMEOUT_S = 120.0
# Headers about one hop's connection or body encoding, not the request (RFC 9110 7.6.1).
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_endpoint(endpoint: str, index: int) -> str:
    """Engine ``index``'s worker endpoint: private by default; else the given tcp port + index, or ipc path + index."""
    if not endpoint:
        return ""
    if endpoint.startswith("tcp://"):
        address, _, port = endpoint.rpartition(":")
        return f"{address}:{int(port) + index}"
    return f"{endpoint}.{index}"


def settings_environment(settings: HostSettings) -> dict[str, str]:
    """The settings as ``SMALLWEBRTC_HOST_*`` variables, so a child process resolves exactly these."""
    return {
        f"SMALLWEBRTC_HOST_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.model_dump(mode="json").items()
    }


@dataclass
class Shard:
    """One engine process: its loopback port and share of the workers survive restarts, its id does not."""

    slot: ProcessSlot
    port: int
    workers: int
    endpoint: str
    engine_id: str = ""

    @property
    def url(self) -> str:
        """Where its HTTP API listens."""
        return f"http://127.0.0.1:{self.port}"


class EngineShards:
    """Runs ``settings.engines`` engine processes, restarts one that crashes, and knows which owns a peer."""

    def __init__(self, settings: HostSettings, config_file: str | None, client: httpx.AsyncClient):
        """Initialize the shards (none runs until ``start``).

        Args:
            settings: Host settings; the local workers are shared out among the engines.
            config_file: The configuration file the engines read too.
            client: The HTTP client that asks an engine whether it is ready.
        """
        count, workers = settings.engines, settings.worker_count
        self.shards = [
            Shard(
                ProcessSlot(f"engine-{i}"), _free_port(), workers // count + (i < workers % count),
                shard_endpoint(settings.engine_endpoint, i),
            )
            for i in range(count)
        ]
        self._config_file = config_file
        self._client = client
        self._env = {**os.environ, **settings_environment(settings)}
        self._turn = 0
        self._watch_task: asyncio.Task | None = None
        self.on_all_ended: Callable[[], None] = lambda: None

    async def start(self) -> None:
        """Start every engine and wait until each serves and its workers have joined.

        Raises:
            RuntimeError: If an engine exits or is not ready within ``ENGINE_START_TIMEOUT_S``.
        """
        await asyncio.gather(*(self._spawn(shard) for shard in self.shards))
        self._watch_task = asyncio.create_task(self._watch(), name="engine-shards")

    async def _spawn(self, shard: Shard) -> None:
        config = ["--config", self._config_file] if self._config_file else []
        endpoint = ["--engine-endpoint", shard.endpoint] if shard.endpoint else []
        shard.engine_id = ""
        shard.slot.process = process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(shard.port),
            "--workers", str(shard.workers), "--engines", "1", *endpoint, *config,
            env=self._env,
            # Its own session: a terminal's Ctrl-C reaches this process, which stops the engines in order.
            start_new_session=True,
        )
        shard.slot.started_at = time.monotonic()
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while time.monotonic() < deadline and process.returncode is None:
            try:
                status = (await self._client.get(f"{shard.url}/workers")).json()
                if len(status["workers"]) >= shard.workers:
                    shard.engine_id = status["engine_id"]
                    logger.info(f"{shard.slot.name} is engine {shard.engine_id} on port {shard.port}")
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
        if process.returncode is None:
            process.kill()  # so the watch sees it ended and applies the restart policy
            await process.wait()
            raise RuntimeError(f"{shard.slot.name} was not ready within {ENGINE_START_TIMEOUT_S:g} s")
        raise RuntimeError(f"{shard.slot.name} did not start (exit code {process.returncode})")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for shard in self.shards:
                if not shard.slot.exited():
                    continue
                shard.engine_id = ""
                if shard.slot.process.returncode == 0:
                    shard.slot.given_up = True  # it drained and stopped: it is done
                elif await shard.slot.wait_to_restart("engine"):
                    try:
                        await self._spawn(shard)
                    except RuntimeError as e:
                        logger.error(str(e))
            if all(shard.slot.given_up for shard in self.shards):
                self.on_all_ended()
                return

    def live(self) -> list[Shard]:
        """The engines serving now."""
        return [shard for shard in self.shards if shard.engine_id]

    def owner(self, pc_id: str | None) -> Shard | None:
        """The engine that owns a peer (its id starts the pc_id)."""
        if not pc_id:
            return None
        return next((shard for shard in self.live() if pc_id.startswith(shard.engine_id + "-")), None)

    def in_turn(self) -> list[Shard]:
        """The live engines, the next in turn first: new sessions go round."""
        live = self.live()
        self._turn += 1
        first = self._turn % len(live) if live else 0
        return live[first:] + live[:first]

    def signal_all(self, signum: int) -> None:
        """Send every running engine a signal (SIGTERM: drain; a second one: stop now)."""
        for shard in self.shards:
            if shard.slot.process is not None and shard.slot.process.returncode is None:
                shard.slot.process.send_signal(signum)

    async def stop(self, grace_s: float) -> None:
        """Stop watching; stop every engine (terminated after ``grace_s``)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        self.signal_all(signal.SIGTERM)
        self.signal_all(signal.SIGTERM)
        await asyncio.gather(*(stop_process(s.slot.process, grace_s) for s in self.shards if s.slot.process))


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


def create_front_app(shards: EngineShards, client: httpx.AsyncClient) -> FastAPI:
    """The HTTP API of a host with several engines: every route of one engine, handed to the engine that owns it.

    Args:
        shards: The engines.
        client: The HTTP client requests are forwarded with.
    """
    app = FastAPI(title="smallwebrtc-host")
    start_sessions: OrderedDict[str, Shard] = OrderedDict()

    def no_engine() -> JSONResponse:
        return JSONResponse({"detail": "no engine is running"}, status_code=503, headers={"Retry-After": "2"})

    async def forward(shard: Shard, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            reply = await client.request(
                request.method, shard.url + request.url.path, params=request.query_params, headers=headers, content=body
            )
        except httpx.HTTPError as e:
            logger.warning(f"{shard.slot.name} did not answer {request.method} {request.url.path}: {e}")
            return JSONResponse({"detail": f"engine {shard.engine_id} did not answer"}, status_code=502)
        headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(reply.content, reply.status_code, headers=headers)

    async def first_taker(request: Request, body: bytes) -> tuple[Shard | None, Response]:
        """Offer a new session to the engines in turn; one that is full, draining (503) or gone (502) passes it on."""
        reply: Response = no_engine()
        for shard in shards.in_turn():
            reply = await forward(shard, request, body)
            if reply.status_code not in (502, 503):
                return shard, reply
        return None, reply

    @app.api_route("/api/offer", methods=["POST", "PATCH"])
    async def offer(request: Request):
        body = await request.body()
        pc_id = _pc_id_of(body)
        if pc_id is None and request.method == "POST":
            return (await first_taker(request, body))[1]
        shard = shards.owner(pc_id)
        # An unknown pc_id: any engine answers it with its 404.
        shard = shard or next(iter(shards.live()), None)
        return await forward(shard, request, body) if shard else no_engine()

    @app.post("/start")
    async def start(request: Request):
        shard, reply = await first_taker(request, await request.body())
        if shard is not None and reply.status_code == 200:
            start_sessions[json.loads(reply.body)["sessionId"]] = shard
            while len(start_sessions) > MAX_START_SESSIONS:
                start_sessions.popitem(last=False)
        return reply

    @app.api_route("/sessions/{session_id}/api/offer", methods=["POST", "PATCH"])
    async def session_offer(session_id: str, request: Request):
        body = await request.body()
        # An unknown session: any engine answers it with its 404.
        shard = shards.owner(_pc_id_of(body)) or start_sessions.get(session_id) or next(iter(shards.live()), None)
        return await forward(shard, request, body) if shard else no_engine()

    async def from_every_engine(path: str) -> dict[str, httpx.Response]:
        live = shards.live()
        replies = await asyncio.gather(*(client.get(shard.url + path) for shard in live), return_exceptions=True)
        return {s.engine_id: r for s, r in zip(live, replies) if isinstance(r, httpx.Response)}

    @app.get("/workers")
    async def workers():
        """Every engine's live workers."""
        replies = await from_every_engine("/workers")
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
        return {"status": "ok", "engines": len(shards.live())}

    @app.get("/metrics")
    async def metrics():
        """Every engine's Prometheus metrics, labelled with its ``engine``."""
        replies = await from_every_engine("/metrics")
        merged = _merged_metrics({engine_id: reply.text for engine_id, reply in replies.items()})
        return Response(merged, media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/drain")
    async def admin_drain(request: Request):
        """Drain every engine (each checks the admin token)."""
        body = await request.body()
        replies = [await forward(shard, request, body) for shard in shards.live()]
        return replies[0] if replies else no_engine()

    @app.api_route("/{path:path}", methods=["GET", "HEAD"])
    async def anything_else(path: str, request: Request):
        live = shards.live()
        return await forward(live[0], request, b"") if live else no_engine()

    return app
