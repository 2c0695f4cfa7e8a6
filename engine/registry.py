"""The workers the engine knows, and where a new session goes."""

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from engine.common.link import Frames, Outbox, send_to_worker_now
from engine.common.protocol import MediaLane, WorkerHeartbeat

# The most a worker's heartbeat may claim: past these it only hides how loaded it is.
MAX_REPORTED_CPU_SHARE = 256.0
MAX_REPORTED_LOOP_LAG_MS = 60_000.0
MAX_REPORTED_RSS_MB = 1024.0 * 1024
# Session ids a heartbeat may list; the engine never gives a worker this many.
MAX_REPORTED_SESSIONS = 1024


def _reported(value: float, most: float) -> float:
    """A load figure a worker reported, within 0..most; a value that is not a number counts as the most."""
    return min(max(value, 0.0), most) if math.isfinite(value) else most


@dataclass(eq=False)
class WorkerHandle:
    """The engine's view of one worker: its load, its sessions and its outbox.

    Everything the engine sends to the worker goes through ``outbox``, drained
    by one pump task, so a stuck worker only ever backs up its own outbox.
    """

    worker_id: str
    pid: int
    hostname: str
    capacity: int
    outbox: Outbox
    last_seen: float = field(default_factory=time.monotonic)
    loop_lag_ms: float = 0.0
    cpu_share: float = 0.0
    reported_sessions: frozenset[str] = frozenset()
    rss_mb: float = 0.0
    frames_dropped: int = 0
    draining: bool = False
    # Why the engine is replacing this worker (it drains meanwhile), and since when.
    retiring: str | None = None
    retiring_since: float = 0.0
    # Whether it ever ran a session: a fresh worker's footprint is not what a memory limit is for.
    served: bool = False
    # Session ids it reported that are not its sessions, and since when.
    stray_since: dict[str, float] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    pump_task: asyncio.Task | None = None
    lost_reason: str | None = None
    # The CurveZMQ public key (z85) it registered with; None on a link without Curve.
    key: str | None = None

    @property
    def alive(self) -> bool:
        """Whether the worker is still taking part."""
        return self.lost_reason is None and self.outbox.broken is None

    @property
    def has_room(self) -> bool:
        """Whether the worker takes another session."""
        return self.alive and not self.draining and self.retiring is None and len(self.sessions) < self.capacity

    def hold(self, pc_id: str) -> None:
        """Hold room for a session placed (or moved) here."""
        self.sessions.add(pc_id)
        self.served = True

    def heard(self, heartbeat: WorkerHeartbeat | None = None) -> None:
        """The worker spoke; a heartbeat also carries its load.

        Placement trusts these figures only within what a worker can honestly
        report: a negative or non-finite load would make it look emptier than
        an idle worker and draw every new session, so it counts as full instead.
        """
        self.last_seen = time.monotonic()
        if heartbeat is not None:
            self.loop_lag_ms = _reported(heartbeat.loop_lag_ms, MAX_REPORTED_LOOP_LAG_MS)
            self.cpu_share = _reported(heartbeat.cpu_share, MAX_REPORTED_CPU_SHARE)
            self.reported_sessions = frozenset(heartbeat.session_ids[:MAX_REPORTED_SESSIONS])
            self.rss_mb = _reported(heartbeat.rss_mb, MAX_REPORTED_RSS_MB)
            self.frames_dropped = max(0, heartbeat.frames_dropped)
            self.draining = heartbeat.draining

    def describe(self) -> dict:
        """The worker as ``GET /workers`` shows it."""
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "hostname": self.hostname,
            "capacity": self.capacity,
            "sessions": sorted(self.sessions),
            "reported_sessions": sorted(self.reported_sessions),
            "rss_mb": round(self.rss_mb, 1),
            "loop_lag_ms": round(self.loop_lag_ms, 2),
            "cpu_share": round(self.cpu_share, 3),
            "frames_dropped": self.frames_dropped,
            "draining": self.draining,
            "retiring": self.retiring,
        }


class WorkerRegistry:
    """Live workers by id, and placement of new sessions on them."""

    def __init__(self, router: zmq.Socket, on_drop: Callable[[MediaLane], None] | None = None):
        """Initialize the registry.

        Args:
            router: The engine's socket (a plain view of it), which every worker handle sends through.
            on_drop: Called with the lane of every media item an outbox drops.
        """
        self._router = router
        self._on_drop = on_drop
        self._workers: dict[str, WorkerHandle] = {}

    def __iter__(self):
        return iter(list(self._workers.values()))

    def get(self, worker_id: str) -> WorkerHandle | None:
        """The live worker with this id."""
        return self._workers.get(worker_id)

    def add(self, worker_id: str, pid: int, hostname: str, capacity: int, key: str | None = None) -> WorkerHandle:
        """Register a worker (again, if it reconnected) and start sending to it."""
        identity = worker_id.encode()
        handle = WorkerHandle(
            worker_id=worker_id,
            pid=pid,
            hostname=hostname,
            capacity=capacity,
            outbox=Outbox(f"outbox to worker {worker_id}", self._on_drop),
            key=key,
        )

        def send(parts: Frames) -> bool:
            sent = send_to_worker_now(self._router, identity, parts)
            if sent is None and handle.lost_reason is None:
                # A message the socket cannot route is not dropped silently: the worker is
                # lost to this engine, and the supervisor moves its sessions.
                handle.lost_reason = "not connected: a message to it could not be delivered"
            return sent is not False

        handle.pump_task = asyncio.create_task(handle.outbox.pump(send), name=f"pump-{worker_id}")
        self._workers[worker_id] = handle
        return handle

    def remove(self, handle: WorkerHandle, reason: str) -> None:
        """Forget a worker and stop sending to it."""
        handle.lost_reason = handle.lost_reason or reason
        if self._workers.get(handle.worker_id) is handle:
            del self._workers[handle.worker_id]
        if handle.pump_task:
            handle.pump_task.cancel()

    def place(self) -> WorkerHandle | None:
        """The least-loaded live worker with room, or None.

        Load is the share of its capacity in use plus the cores it burns (a
        worker whose bots are heavy counts as fuller), its loop lag breaking ties.
        """
        candidates = [w for w in self._workers.values() if w.has_room]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (len(w.sessions) / w.capacity + w.cpu_share, w.loop_lag_ms))
