"""The engine's Prometheus metrics (``GET /metrics``).

Counters and histograms are updated where things happen; the gauges (live
sessions, workers, queue depths, loop lag) are read from the engine at scrape
time, so nothing has to keep them in step.
"""

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from engine.common.protocol import MediaLane


class SessionOutcome(StrEnum):
    """Why a session ended, as the sessions_total counter labels it."""

    PEER_LEFT = "peer_left"
    PEER_LOST = "peer_lost"
    BOT_ENDED = "bot_ended"
    WORKER_LOST = "worker_lost"
    CONNECT_TIMEOUT = "connect_timeout"
    REJECTED = "rejected"
    HOST_STOPPED = "host_stopped"


class HostMetrics:
    """Every metric the engine exports."""

    def __init__(self, engine):
        """Initialize the metrics.

        Args:
            engine: The engine whose live state the gauges read.
        """
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_total = Counter("smallwebrtc_sessions_total", "Sessions ended, by outcome.", ["outcome"], registry=r)
        self.sessions_started = Counter("smallwebrtc_sessions_started_total", "Sessions placed on a worker.", registry=r)
        self.sessions_moved = Counter("smallwebrtc_sessions_moved_total", "Sessions moved off a lost worker.", registry=r)
        self.workers_retired = Counter(
            "smallwebrtc_workers_retired_total", "Workers drained and replaced, by reason (memory: past worker_memory_limit_mb).",
            ["reason"], registry=r,
        )
        self.offers_refused = Counter("smallwebrtc_offers_refused_total", "Offers refused, by HTTP status.", ["status"], registry=r)
        self.frames = Counter(
            "smallwebrtc_frames_total",
            "Media frames: 'in' from peers forwarded to workers, 'out' from bots to peers.",
            ["kind", "direction"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "smallwebrtc_frames_dropped_total",
            "Media frames dropped by a bounded queue, by kind and queue.",
            ["kind", "reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            "smallwebrtc_requests_refused_total",
            "HTTP requests refused before they reach a session, by reason.",
            ["reason"],
            registry=r,
        )
        self.data_channel_dropped = Counter(
            "smallwebrtc_data_channel_dropped_total",
            "Data-channel messages dropped, by reason: from the peer, or for a peer that does not read.",
            ["reason"],
            registry=r,
        )
        self.session_setup = Histogram(
            "smallwebrtc_session_setup_seconds",
            "From a new offer to its answer.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.first_media = Histogram(
            "smallwebrtc_time_to_first_media_seconds",
            "From a session's answer to the first bot media handed to the peer's tracks.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
            registry=r,
        )
        r.register(_LiveState(engine))
        # Bound once: these are counted per frame.
        self.audio_in = self.frames.labels("audio", "in")
        self.video_in = self.frames.labels("video", "in")
        self.audio_out = self.frames.labels("audio", "out")
        self.video_out = self.frames.labels("video", "out")

    def count_drop(self, reason: str) -> Callable[[MediaLane], None]:
        """A callback that counts a mailbox's dropped items under ``reason``."""

        def dropped(lane: MediaLane) -> None:
            self.frames_dropped.labels(lane.kind, reason).inc()

        return dropped

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _LiveState:
    """Gauges read from the engine at scrape time."""

    def __init__(self, engine):
        self._engine = engine

    def collect(self):
        engine = self._engine
        yield GaugeMetricFamily("smallwebrtc_sessions_active", "Sessions not ended.", value=engine.live_peer_count())
        yield GaugeMetricFamily("smallwebrtc_draining", "1 while the host drains.", value=int(engine.draining))
        yield GaugeMetricFamily(
            "smallwebrtc_event_loop_lag_ms", "How late the engine's event loop wakes (last second).", value=engine.loop_lag_ms
        )
        workers = list(engine.registry or [])
        yield GaugeMetricFamily("smallwebrtc_workers_live", "Workers taking part.", value=len(workers))
        families = {
            "sessions": GaugeMetricFamily("smallwebrtc_worker_sessions", "Sessions placed on a worker.", labels=["worker_id"]),
            "capacity": GaugeMetricFamily("smallwebrtc_worker_capacity", "Sessions a worker takes.", labels=["worker_id"]),
            "lag": GaugeMetricFamily(
                "smallwebrtc_worker_event_loop_lag_ms", "A worker's event-loop lag, p99 over 5 s.", labels=["worker_id"]
            ),
            "cpu": GaugeMetricFamily("smallwebrtc_worker_cpu_share", "Cores a worker used in the last second.", labels=["worker_id"]),
            "queue": GaugeMetricFamily(
                "smallwebrtc_ipc_queue_depth", "Messages waiting in the engine's outbox to a worker.", labels=["worker_id"]
            ),
            "rss": GaugeMetricFamily("smallwebrtc_worker_rss_mb", "A worker's resident memory, as it last reported.", labels=["worker_id"]),
            "worker_dropped": GaugeMetricFamily(
                "smallwebrtc_worker_frames_dropped", "Frames a worker's bots read too late, as it last reported.", labels=["worker_id"]
            ),
        }
        for w in workers:
            families["sessions"].add_metric([w.worker_id], len(w.sessions))
            families["capacity"].add_metric([w.worker_id], w.capacity)
            families["lag"].add_metric([w.worker_id], w.loop_lag_ms)
            families["cpu"].add_metric([w.worker_id], w.cpu_share)
            families["queue"].add_metric([w.worker_id], len(w.outbox.mailbox))
            families["rss"].add_metric([w.worker_id], w.rss_mb)
            families["worker_dropped"].add_metric([w.worker_id], w.frames_dropped)
        yield from families.values()
