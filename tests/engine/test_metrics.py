"""The engine's metrics: counters where things happen, gauges read from a real engine at scrape time."""

from prometheus_client.parser import text_string_to_metric_families

from engine.common.protocol import MediaKind, MediaLane, WorkerHeartbeat
from engine.metrics import HostMetrics, SessionOutcome
from engine.sessions import Engine
from tests.support.engines import engine_settings, running_engine, stand_in_workers
from tests.support.link import until


def samples(metrics: HostMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_an_engine_not_started_shows_no_worker_and_no_session():
    scraped = samples(Engine(engine_settings("")).metrics)
    assert scraped[("smallwebrtc_workers_live", ())] == 0
    assert scraped[("smallwebrtc_sessions_active", ())] == 0
    assert scraped[("smallwebrtc_draining", ())] == 0


async def test_the_gauges_read_the_engine_and_its_workers():
    async with running_engine() as engine, stand_in_workers(engine.endpoint, "w1") as (worker,):
        await worker.register(capacity=3)
        await worker.send(WorkerHeartbeat(loop_lag_ms=4.0, cpu_share=0.5, frames_dropped=6, draining=False))
        handle = engine.registry.get("w1")
        await until(lambda: handle.frames_dropped == 6)
        engine.drain("test")
        scraped = samples(engine.metrics)
    worker_label = (("worker_id", "w1"),)
    assert scraped[("smallwebrtc_workers_live", ())] == 1
    assert scraped[("smallwebrtc_draining", ())] == 1
    assert scraped[("smallwebrtc_worker_capacity", worker_label)] == 3
    assert scraped[("smallwebrtc_worker_sessions", worker_label)] == 0
    assert scraped[("smallwebrtc_worker_event_loop_lag_ms", worker_label)] == 4.0
    assert scraped[("smallwebrtc_worker_cpu_share", worker_label)] == 0.5
    assert scraped[("smallwebrtc_worker_frames_dropped", worker_label)] == 6
    assert ("smallwebrtc_ipc_queue_depth", worker_label) in scraped
    assert ("smallwebrtc_event_loop_lag_ms", ()) in scraped


def test_counters_count_drops_and_outcomes():
    metrics = Engine(engine_settings("")).metrics
    dropped = metrics.count_drop("engine_outbox")
    dropped(MediaLane("pc-1", MediaKind.AUDIO))
    dropped(MediaLane("pc-1", MediaKind.AUDIO))
    metrics.sessions_total.labels(SessionOutcome.WORKER_LOST).inc()
    metrics.audio_in.inc()
    scraped = samples(metrics)
    assert scraped[("smallwebrtc_frames_dropped_total", (("kind", "audio"), ("reason", "engine_outbox")))] == 2
    assert scraped[("smallwebrtc_sessions_total", (("outcome", "worker_lost"),))] == 1
    assert scraped[("smallwebrtc_frames_total", (("direction", "in"), ("kind", "audio")))] == 1
