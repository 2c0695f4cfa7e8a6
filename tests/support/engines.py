"""For the engine's unit tests: a real engine on a private ipc endpoint, real DEALER sockets standing in for workers, and client offers."""

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import zmq.asyncio
from aiortc import RTCPeerConnection, RTCSessionDescription

from engine.cli import make_keys
from engine.common.link import connect_dealer, frames
from engine.common.protocol import (
    FromEngine,
    FromWorker,
    WorkerAccept,
    WorkerHeartbeat,
    WorkerRegister,
    decode_from_engine,
)
from engine.common.settings import HostSettings
from engine.engine_pool import EnginePool
from engine.sessions import Engine
from tests.support.link import DUE_S, private_endpoint, until
from tests.support.peers import client_pc, loopback_only

# A trickled candidate that says there are no more (RFC 8840), as the web client PATCHes it.
END_OF_CANDIDATES = {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}


def engine_settings(endpoint: str, **overrides) -> HostSettings:
    """Settings for an engine confined to loopback whose workers join at ``endpoint``."""
    return HostSettings(**{"engine_endpoint": endpoint, "ice_host_addresses": ["127.0.0.1"], **overrides})


@contextlib.asynccontextmanager
async def running_engine(**overrides) -> AsyncIterator[Engine]:
    """A started engine with no worker yet, on a private endpoint; stopped afterwards.

    Args:
        **overrides: Host settings.
    """
    with private_endpoint() as endpoint:
        engine = Engine(engine_settings(endpoint, **overrides))
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()


@contextlib.asynccontextmanager
async def running_pool(engines: int = 2) -> AsyncIterator[tuple[EnginePool, httpx.AsyncClient]]:
    """``engines`` engine processes without local workers (on private endpoints), and the HTTP client that asks them.

    Every engine serves once this yields; all are stopped afterwards.
    """
    with private_endpoint() as endpoint:
        async with httpx.AsyncClient(timeout=30) as client:
            pool = EnginePool(engine_settings(endpoint, engines=engines, workers=0), None, client)
            try:
                await pool.start()
                yield pool, client
            finally:
                await pool.stop(grace_s=5)


@dataclass(frozen=True)
class WorkerKeys:
    """A worker's CurveZMQ key files: its secret key and the engine's public key."""

    secret_file: str
    server_file: str


def curve_keys(directory: Path, *worker_names: str) -> tuple[dict, dict[str, WorkerKeys]]:
    """An engine key pair and workers' key pairs, made in ``directory``, the workers' public keys authorized.

    Returns:
        The engine's curve settings, and each worker's keys by name.
    """
    engine_public, engine_secret = make_keys(str(directory / "engine"), "engine")
    authorized = directory / "authorized"
    authorized.mkdir()
    workers = {}
    for name in worker_names:
        public, secret = make_keys(str(directory / name), name)
        shutil.copy(public, authorized)
        workers[name] = WorkerKeys(secret, engine_public)
    return {"curve_secret_key_file": engine_secret, "curve_authorized_keys_dir": str(authorized)}, workers


class StandInWorker:
    """A worker as the engine sees it: a real DEALER socket the test speaks the protocol on.

    ``register`` joins, ``send`` sends any worker message, ``expect`` waits for
    one kind of engine message (passing over the others, say heartbeats), and
    ``keep_beating`` heartbeats in the background as a live worker does.
    """

    def __init__(self, endpoint: str, worker_id: str, keys: WorkerKeys | None = None):
        """Connect to the engine at ``endpoint`` as ``worker_id`` (over CurveZMQ with ``keys``)."""
        self.worker_id = worker_id
        self.context = zmq.asyncio.Context()
        curve = (keys.secret_file, keys.server_file) if keys else ()
        self.socket = connect_dealer(self.context, endpoint, worker_id, *curve)
        # What its heartbeats report: the sessions it runs, its memory.
        self.session_ids: tuple[str, ...] = ()
        self.rss_mb = 0.0
        self._beating: asyncio.Task | None = None

    async def send(self, message: FromWorker, *payload: bytes) -> None:
        """Send one message (and its payload frames) to the engine."""
        await self.socket.send_multipart(frames(message, *payload))

    async def register(self, capacity: int = 4) -> WorkerAccept:
        """Join the engine; returns its acceptance."""
        await self.send(WorkerRegister(self.worker_id, os.getpid(), "stand-in", capacity))
        return await self.expect(WorkerAccept)

    async def recv(self, timeout: float = 5.0) -> tuple[FromEngine, list[bytes]]:
        """The next message from the engine and its payload frames."""
        header, *payload = await asyncio.wait_for(self.socket.recv_multipart(), timeout)
        return decode_from_engine(header), payload

    async def expect(self, kind: type, timeout: float = 5.0, **fields) -> FromEngine:
        """The next message of type ``kind`` whose attributes equal ``fields``, passing over the others."""

        async def wait() -> FromEngine:
            while True:
                message, _ = await self.recv(timeout)
                if isinstance(message, kind) and all(getattr(message, k) == v for k, v in fields.items()):
                    return message

        return await asyncio.wait_for(wait(), timeout)

    def keep_beating(self, interval: float = 0.1) -> None:
        """Heartbeat every ``interval`` seconds until closed."""

        async def beat() -> None:
            while True:
                await self.send(WorkerHeartbeat(loop_lag_ms=0.0, session_ids=self.session_ids, rss_mb=self.rss_mb))
                await asyncio.sleep(interval)

        self._beating = asyncio.create_task(beat())

    def close(self) -> None:
        """Stop heartbeating and close the socket: to the engine, the worker falls silent."""
        if self._beating is not None:
            self._beating.cancel()
        self.socket.close(linger=0)
        self.context.term()


@contextlib.asynccontextmanager
async def stand_in_workers(
    endpoint: str, *worker_ids: str, keys: WorkerKeys | None = None
) -> AsyncIterator[list[StandInWorker]]:
    """Stand-in workers connected (not yet registered) to ``endpoint`` (with ``keys``, over CurveZMQ); closed afterwards."""
    workers = [StandInWorker(endpoint, worker_id, keys) for worker_id in worker_ids]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.close()


@contextlib.asynccontextmanager
async def stand_in_once_its_id_is_free(
    endpoint: str, worker_id: str, first: FromWorker, taken: Callable[[], bool], keys: WorkerKeys | None = None
) -> AsyncIterator[StandInWorker]:
    """A stand-in worker connected as ``worker_id`` whose ``first`` message the engine took (``taken()`` holds).

    The engine's socket ignores a connection that presents an id another
    connection holds, until that one is gone: the stand-in connects again
    (and sends ``first`` again) until it gets through.

    Raises:
        TimeoutError: If it has not within ``DUE_S`` times 6.
    """
    async with asyncio.timeout(DUE_S * 6):
        while True:
            worker = StandInWorker(endpoint, worker_id, keys)
            await worker.send(first)
            try:
                await until(taken, timeout=1.0)
                break
            except TimeoutError:
                worker.close()
    try:
        yield worker
    finally:
        worker.close()



@contextlib.asynccontextmanager
async def client_offer() -> AsyncIterator[RTCPeerConnection]:
    """A client's peer connection whose local description is an offer as the web client makes it (audio, video, "chat")."""
    with loopback_only():
        pc = client_pc()
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="sendrecv")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            yield pc
        finally:
            await pc.close()


async def apply_answer(pc: RTCPeerConnection, answer: dict) -> None:
    """Apply the engine's answer, as the web client does: the peer then connects (and its bot starts)."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
