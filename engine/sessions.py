"""The engine's sessions: one peer actor per session, placed on a worker, moved off a lost one, drained."""

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger

from engine.aiortc_seam import set_sctp_max_chunk_size
from engine.common.diagnostics import live_objects
from engine.common.protocol import (
    SessionClose,
    SessionMessage,
    SessionOpen,
    WorkerDrain,
)
from engine.common.settings import ConnectionMode, HostSettings
from engine.ice import announce_address, restrict_host_addresses
from engine.metrics import HostMetrics, SessionOutcome
from engine.peer import PeerActor, SignalingError
from engine.registry import WorkerHandle, WorkerRegistry
from engine.worker_link import LocalWorkerAccess, WorkerLink

# The objects a session is made of in the engine, counted on SIGUSR1 to see whether ended sessions are freed.
SESSION_OBJECT_TYPES = (
    "PeerActor", "PeerMedia", "RTCPeerConnection", "RTCRtpReceiver", "RTCRtpSender",
    "RTCDtlsTransport", "RTCSctpTransport", "EncodedAudioTrack", "EncodedVideoTrack",
)

# What a draining host answers a new session (an offer or a /start), and when to try again.
DRAINING_DETAIL = "the host is draining: it takes no new sessions"
DRAINING_RETRY_S = 30


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
    """Owns the peer actors and the link to the workers that run their bots."""

    def __init__(self, settings: HostSettings):
        """Initialize the engine; ``start()`` binds it.

        Args:
            settings: Host settings.
        """
        self.settings = settings
        # It starts every id the engine mints, so a front or a balancer finds the owner in the id.
        self.engine_id = f"{settings.host_id or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.peers: dict[str, PeerActor] = {}
        # Sessions already moved off a lost worker: a second loss ends them.
        self._moved: set[str] = set()
        self._peer_tasks: set[asyncio.Task] = set()
        self.metrics = HostMetrics(self)
        self._link = WorkerLink(
            settings,
            self.engine_id,
            self._deliver,
            self._move_sessions,
            self.metrics.count_drop("engine_outbox"),
            on_heartbeat=self._worker_heard,
        )
        self.draining = False
        self.on_drained: Callable[[], None] | None = None
        self._drain_task: asyncio.Task | None = None
        self.log = logger.bind(engine_id=self.engine_id)

    @property
    def endpoint(self) -> str:
        """Where workers reach the engine (a private ipc endpoint once started, if none was set)."""
        return self._link.endpoint

    @property
    def local_access(self) -> LocalWorkerAccess | None:
        """How a worker on this machine joins the engine (None until started)."""
        return self._link.local_access

    @property
    def registry(self) -> WorkerRegistry | None:
        """The live workers (None until started)."""
        return self._link.registry

    @property
    def loop_lag_ms(self) -> float:
        """How late the engine's event loop last woke up."""
        return self._link.loop_lag_ms

    async def start(self) -> None:
        """Apply the process-wide aiortc settings and bind the worker socket."""
        restrict_host_addresses(self.settings.ice_host_addresses)
        set_sctp_max_chunk_size(self.settings.sctp_max_chunk_size)
        self._link.start()
        # Operators (and tests/bench/soak.py) send SIGUSR1 to see what a long-running engine still holds.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._report_live_objects)

    def _report_live_objects(self) -> None:
        self.log.info(f"live objects in engine {os.getpid()}: peers={len(self.peers)} {live_objects(SESSION_OBJECT_TYPES)}")

    def watch_local_worker(self, worker_id: str, process: asyncio.subprocess.Process) -> None:
        """Declare a worker dead as soon as its local process exits, not only when its heartbeats stop."""
        self._link.watch_local_worker(worker_id, process)

    async def stop(self) -> None:
        """End every session, tell workers to leave, and release the socket and its files."""
        for peer in list(self.peers.values()):
            peer.close("host shutting down", SessionOutcome.HOST_STOPPED)
        deadline = time.monotonic() + 2.0
        while self.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._link.stop()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        if self._drain_task is not None:
            self._drain_task.cancel()

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
            raise OfferRejected(503, DRAINING_DETAIL, retry_after=DRAINING_RETRY_S)
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
        worker.hold(pc_id)
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
        self.metrics.sessions_started.inc()
        self.metrics.session_setup.observe(time.monotonic() - started)
        # The worker's room is held from now; its bot starts when the peer connects (PeerActor).
        peer.log.info(f"peer {pc_id}: new session, placed on worker {worker.worker_id}")
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
        self._moved.discard(peer.pc_id)

    # ---- what the worker link reports ----

    def _deliver(self, worker: WorkerHandle, message: SessionMessage, payload: list) -> None:
        """Hand a worker's message to its session's peer, if that worker still runs the session."""
        peer = self.peers.get(message.session_id)
        if peer is not None and peer.worker is worker:
            peer.deliver(message, payload)

    def _worker_heard(self, worker: WorkerHandle) -> None:
        """Agree with a worker on the sessions it runs, and replace it once past its memory limit."""
        now = time.monotonic()
        # Heartbeats cross the link with the messages that open and close sessions: only what
        # stays wrong for this long is a disagreement.
        settled = self.settings.worker_dead_after_s
        for pc_id in worker.sessions - worker.reported_sessions:
            peer = self.peers.get(pc_id)
            if peer is not None and peer.bot_started_at is not None and now - peer.bot_started_at > settled:
                peer.close(f"worker {worker.worker_id} does not run its bot", SessionOutcome.WORKER_LOST, tell_worker=False)
        stray = worker.reported_sessions - worker.sessions
        worker.stray_since = {pc_id: worker.stray_since.get(pc_id, now) for pc_id in stray}
        for pc_id, since in worker.stray_since.items():
            if now - since > settled:
                self.log.warning(f"worker {worker.worker_id} runs a bot for {pc_id!r}, which is not its session: closing it")
                worker.outbox.send(SessionClose(pc_id, "not a session of this worker"))
                worker.stray_since[pc_id] = now
        self._retire_if_too_big(worker, now)

    def _retire_if_too_big(self, worker: WorkerHandle, now: float) -> None:
        """Past ``worker_memory_limit_mb`` a worker drains and is replaced; what it still runs after the drain timeout moves."""
        limit = self.settings.worker_memory_limit_mb
        if worker.retiring is not None:
            if now - worker.retiring_since > self.settings.drain_timeout_s:
                self._link.lose(worker, f"retired ({worker.retiring}) and not drained within drain_timeout_s")
        # A worker that never ran a session is as small as it gets: a limit below that is not its doing.
        elif limit and worker.served and worker.rss_mb > limit:
            worker.retiring, worker.retiring_since = "memory", now
            worker.outbox.send(WorkerDrain(f"memory: {worker.rss_mb:.0f} MB, past worker_memory_limit_mb = {limit}"))
            self.metrics.workers_retired.labels("memory").inc()
            self.log.warning(
                f"worker {worker.worker_id} uses {worker.rss_mb:.0f} MB, past worker_memory_limit_mb = {limit}: "
                f"retiring it (no new sessions; its {len(worker.sessions)} sessions finish, or move after "
                f"{self.settings.drain_timeout_s:g} s)"
            )

    def _move_sessions(self, lost: WorkerHandle, reason: str) -> None:
        """Move a lost worker's sessions to live workers with room; end the ones nobody can take."""
        self.log.error(f"worker {lost.worker_id} lost: {reason}; moving its {len(lost.sessions)} sessions")
        for pc_id in list(lost.sessions):
            peer = self.peers.get(pc_id)
            if peer is None:
                continue
            # A session moves once: if what its peer sends is what crashes workers, a
            # second move would only take down another worker, and then the next.
            target = None if pc_id in self._moved else self.registry.place()
            if target is None:
                why = "it was moved once already" if pc_id in self._moved else "no worker has room"
                peer.close(f"worker {lost.worker_id} lost ({reason}) and {why}", SessionOutcome.WORKER_LOST, tell_worker=False)
            else:
                self._moved.add(pc_id)
                target.hold(pc_id)
                peer.move_to(target)
                self.metrics.sessions_moved.inc()
