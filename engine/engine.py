"""The engine: the one process that owns every peer and every worker link."""

import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiortc.rtcsctptransport
import msgspec
import zmq
import zmq.asyncio
from loguru import logger
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import recv_monitor_message

from engine.common.link import bind_router
from engine.common.protocol import (
    EngineHeartbeat,
    SessionMessage,
    SessionOpen,
    WorkerAccept,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
    decode_from_worker,
)
from engine.common.settings import ConnectionMode, HostSettings
from engine.ice import announce_address, restrict_host_addresses
from engine.metrics import HostMetrics, SessionOutcome
from engine.peer import PeerActor, SignalingError
from engine.registry import WorkerHandle, WorkerRegistry


class OfferRejected(Exception):
    """An offer the engine refuses, with the HTTP status to answer."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None):
        """Initialize the rejection.

        Args:
            status: HTTP status code.
            detail: What the client is told.
            retry_after: Seconds, for a 503.
        """
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class Engine:
    """Owns the peer actors, the worker registry and the ZeroMQ socket between them."""

    def __init__(self, settings: HostSettings):
        """Initialize the engine; ``start()`` binds it.

        Args:
            settings: Host settings.
        """
        self.settings = settings
        self.engine_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.peers: dict[str, PeerActor] = {}
        self.endpoint = settings.engine_endpoint
        self._runtime_dir: str | None = None
        self._context = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self.registry: WorkerRegistry | None = None
        self._tasks: list[asyncio.Task] = []
        self._local_workers: dict[str, Any] = {}
        self._authenticator: AsyncioAuthenticator | None = None
        self._peer_tasks: set[asyncio.Task] = set()
        self.metrics = HostMetrics(self)
        self.loop_lag_ms = 0.0
        self.draining = False
        self.on_drained: Callable[[], None] | None = None
        self._drain_task: asyncio.Task | None = None
        self.log = logger.bind(engine_id=self.engine_id)

    async def start(self) -> None:
        """Apply the process-wide aiortc settings and bind the worker socket."""
        restrict_host_addresses(self.settings.ice_host_addresses)
        # aiortc has no setting for this; see config/host.toml.
        aiortc.rtcsctptransport.USERDATA_MAX_LENGTH = self.settings.sctp_max_chunk_size
        if not self.endpoint:
            self._runtime_dir = tempfile.mkdtemp(prefix="smallwebrtc-host-")
            self.endpoint = f"ipc://{self._runtime_dir}/engine.sock"
        if self.settings.curve_secret_key_file:
            self._start_authenticator()
        self._router = bind_router(self._context, self.endpoint, self.settings.curve_secret_key_file)
        self.registry = WorkerRegistry(self._router, self.metrics.count_drop("engine_outbox"))
        self._tasks = [
            asyncio.create_task(self._receive(), name="engine-receive"),
            asyncio.create_task(self._supervise(), name="engine-supervise"),
        ]
        if self._authenticator is not None:
            self._tasks.append(asyncio.create_task(self._log_refusals(), name="engine-refusals"))
        self.log.info(f"engine {self.engine_id} listening for workers on {self.endpoint}")

    def _start_authenticator(self) -> None:
        """Let only workers whose public key is in curve_authorized_keys_dir connect."""
        keys_dir = self.settings.curve_authorized_keys_dir
        if not os.path.isdir(keys_dir):
            raise ValueError(f"curve_authorized_keys_dir: {keys_dir!r} is not a directory")
        self._authenticator = AsyncioAuthenticator(self._context)
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=keys_dir)

    async def _log_refusals(self) -> None:
        monitor = self._router.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        try:
            while True:
                event = await recv_monitor_message(monitor)
                self.log.error(
                    f"refused a worker connection on {event['endpoint'].decode(errors='replace')}: "
                    "its key is not in curve_authorized_keys_dir (or it does not speak CurveZMQ)"
                )
        finally:
            self._router.disable_monitor()
            monitor.close(linger=0)

    def watch_local_worker(self, worker_id: str, process) -> None:
        """Declare a worker dead as soon as its local process exits, not only when its heartbeats stop."""
        self._local_workers[worker_id] = process

    async def stop(self) -> None:
        """End every session, tell workers to leave, and release the socket and its files."""
        for peer in list(self.peers.values()):
            peer.close("host shutting down", SessionOutcome.HOST_STOPPED)
        deadline = time.monotonic() + 2.0
        while self.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for handle in self.registry or []:
            handle.outbox.send(WorkerStop("engine stopping"))
        # Give the pumps a moment to deliver the stops before the socket goes.
        await asyncio.sleep(0.2)
        for task in [*self._tasks, self._drain_task]:
            if task is not None:
                task.cancel()
        for handle in self.registry or []:
            self.registry.remove(handle, "engine stopped")
        if self._router is not None:
            self._router.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()
        if self._runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    # ---- signaling entry points ----

    def _rewrite(self, answer: dict) -> dict:
        """The answer as the client must see it: behind a NAT, for an ESP32."""
        if self.settings.ice_announced_address:
            answer["sdp"] = announce_address(answer["sdp"], self.settings.ice_announced_address)
        if self.settings.esp32:
            # Only ESP32 mode needs Pipecat in the engine process.
            from pipecat.runner.utils import smallwebrtc_sdp_munging

            # Pipecat's runner keeps only the candidates of the host it serves on.
            host = self.settings.host
            answer["sdp"] = smallwebrtc_sdp_munging(answer["sdp"], None if host in ("0.0.0.0", "::") else host)
        return answer

    def readiness(self) -> str | None:
        """Why the host takes no new session now, or None when it does."""
        if self.draining:
            return "draining"
        if self.registry is None or self.registry.place() is None:
            return "no worker with room"
        return None

    def drain(self, why: str) -> None:
        """Take no new sessions; once the running ones end (or the drain timeout passes), call ``on_drained``."""
        if self.draining:
            return
        self.draining = True
        self.log.warning(
            f"draining ({why}): {self.live_peer_count()} sessions left, taking no new ones; "
            f"the rest end in {self.settings.drain_timeout_s:g} s"
        )
        self._drain_task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.live_peer_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.live_peer_count():
            self.log.warning(f"drain timeout: ending the last {self.live_peer_count()} sessions")
        if self.on_drained is not None:
            self.on_drained()

    def live_peer_count(self) -> int:
        """Sessions that have not ended."""
        return sum(1 for peer in self.peers.values() if not peer.ended)

    async def offer(
        self,
        sdp: str,
        type: str,
        pc_id: str | None,
        restart_pc: bool,
        body: Any,
        runner_session_id: str | None,
    ) -> dict:
        """Answer an offer: renegotiate a known peer, or place a new session on a worker.

        Raises:
            OfferRejected: Unknown pc_id (404), SINGLE mode busy (400), no
                worker with room (503), or an offer that cannot be applied (400).
        """
        if pc_id:
            peer = self.peers.get(pc_id)
            if peer is None or peer.ended:
                raise OfferRejected(404, f"no session with pc_id {pc_id}")
            try:
                answer = await peer.offer(sdp, type, restart_pc)
            except SignalingError as e:
                raise OfferRejected(400, str(e)) from e
            return self._rewrite(answer)

        if self.draining:
            raise OfferRejected(503, "the host is draining: it takes no new sessions", retry_after=30)
        if self.settings.connection_mode == ConnectionMode.SINGLE and self.live_peer_count():
            raise OfferRejected(400, "Cannot create new connection with existing connection active")
        worker = self.registry.place()
        if worker is None:
            raise OfferRejected(503, "every worker is at capacity or none has joined yet", retry_after=2)

        started = time.monotonic()
        pc_id = f"{self.engine_id}-{uuid.uuid4().hex}"
        opening = SessionOpen(pc_id, runner_session_id or str(uuid.uuid4()), body)
        peer = PeerActor(opening, self.settings, worker, self.metrics, self._peer_ended)
        self.peers[pc_id] = peer
        worker.sessions.add(pc_id)
        task = asyncio.create_task(peer.run(), name=f"peer-{pc_id}")
        # asyncio keeps only weak references to running tasks.
        self._peer_tasks.add(task)
        task.add_done_callback(self._peer_tasks.discard)
        try:
            answer = await peer.offer(sdp, type, restart_pc=False)
        except SignalingError as e:
            peer.close(f"rejected offer: {e}", SessionOutcome.REJECTED, tell_worker=False)
            raise OfferRejected(400, str(e)) from e
        answer = self._rewrite(answer)
        worker.outbox.send(opening)
        self.metrics.sessions_started.inc()
        self.metrics.session_setup.observe(time.monotonic() - started)
        peer.log.info(f"peer {pc_id}: new session on worker {worker.worker_id}")
        return answer

    async def add_candidates(self, pc_id: str, candidates: list) -> None:
        """Trickle candidates to a known peer.

        Raises:
            OfferRejected: Unknown pc_id (404) or a rejected candidate (400).
        """
        peer = self.peers.get(pc_id)
        if peer is None or peer.ended:
            raise OfferRejected(404, f"no session with pc_id {pc_id}")
        try:
            await peer.add_candidates(candidates)
        except SignalingError as e:
            raise OfferRejected(400, str(e)) from e

    def _peer_ended(self, peer: PeerActor) -> None:
        self.peers.pop(peer.pc_id, None)

    # ---- the worker link ----

    async def _receive(self) -> None:
        while True:
            parts = await self._router.recv_multipart(copy=False)
            identity = parts[0].bytes.decode(errors="replace")
            try:
                message = decode_from_worker(parts[1].buffer)
            except (msgspec.DecodeError, IndexError) as e:
                self.log.warning(f"dropping an unreadable message from worker {identity}: {e}")
                continue
            try:
                self._dispatch(identity, message, parts[2:])
            except Exception:
                self.log.exception(f"error handling {type(message).__name__} from worker {identity}")

    def _dispatch(self, worker_id: str, message, payload: list) -> None:
        if isinstance(message, WorkerRegister):
            self._register(worker_id, message)
            return
        handle = self.registry.get(worker_id)
        if handle is None:
            self.log.debug(f"ignoring {type(message).__name__} from unregistered worker {worker_id}")
            return
        handle.heard(message if isinstance(message, WorkerHeartbeat) else None)
        if not isinstance(message, SessionMessage):
            return
        peer = self.peers.get(message.session_id)
        if peer is not None and peer.worker is handle:
            peer.deliver(message, payload)

    def _register(self, worker_id: str, message: WorkerRegister) -> None:
        existing = self.registry.get(worker_id)
        if existing is not None:
            self._worker_lost(existing, "registered again (restarted)")
        handle = self.registry.add(worker_id, message.pid, message.hostname, message.capacity)
        handle.outbox.send(WorkerAccept(self.engine_id))
        self.log.info(
            f"worker {worker_id} joined (pid {message.pid} on {message.hostname}, capacity {message.capacity})"
        )

    def _worker_lost(self, handle: WorkerHandle, reason: str) -> None:
        """Move a lost worker's sessions to live workers with room; end the ones nobody can take."""
        self.log.error(f"worker {handle.worker_id} lost: {reason}; moving its {len(handle.sessions)} sessions")
        self.registry.remove(handle, reason)
        for pc_id in list(handle.sessions):
            peer = self.peers.get(pc_id)
            if peer is None:
                continue
            target = self.registry.place()
            if target is None:
                peer.close(f"worker {handle.worker_id} lost ({reason}) and no worker has room", SessionOutcome.WORKER_LOST, tell_worker=False)
            else:
                target.sessions.add(pc_id)
                peer.move_to(target)
                self.metrics.sessions_moved.inc()

    async def _supervise(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, 0.5)
        next_heartbeat = 0.0
        while True:
            now = time.monotonic()
            expected = now + interval
            for handle in self.registry:
                process = self._local_workers.get(handle.worker_id)
                if process is not None and process.returncode is not None:
                    self._worker_lost(handle, f"process exited with code {process.returncode}")
                elif not handle.alive:
                    self._worker_lost(handle, handle.lost_reason or handle.outbox.broken)
                elif now - handle.last_seen > self.settings.worker_dead_after_s:
                    self._worker_lost(handle, f"no heartbeat for {now - handle.last_seen:.1f} s")
                elif now >= next_heartbeat:
                    handle.outbox.send(EngineHeartbeat())
            if now >= next_heartbeat:
                next_heartbeat = now + self.settings.heartbeat_interval_s
            await asyncio.sleep(interval)
            # How late the loop woke up: every peer of this engine waited as long.
            self.loop_lag_ms = max(0.0, (time.monotonic() - expected) * 1000)
