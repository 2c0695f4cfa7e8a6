"""Several engines behind one address: each request reaches the engine that owns its peer."""


import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.common.settings import HostSettings
from engine.shards import _merged_metrics, settings_environment, shard_endpoint


def test_each_engine_gets_its_own_worker_endpoint():
    assert shard_endpoint("", 1) == ""
    assert shard_endpoint("tcp://0.0.0.0:7861", 2) == "tcp://0.0.0.0:7863"
    assert shard_endpoint("ipc:///run/host/engine.sock", 1) == "ipc:///run/host/engine.sock.1"


def test_engines_resolve_the_same_settings(monkeypatch):
    settings = HostSettings(
        workers=3, engines=2, ice_servers=["stun:stun.example.org:3478"], ice_host_addresses=["127.0.0.1"], esp32=True
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert HostSettings() == settings


def test_more_engines_than_workers_is_refused():
    with pytest.raises(ValueError, match="engines: 3 engines would share 2 local workers"):
        HostSettings(workers=2, engines=3)


def test_metrics_of_every_engine_in_one_exposition():
    text = "# HELP smallwebrtc_sessions_active sessions\n# TYPE smallwebrtc_sessions_active gauge\nsmallwebrtc_sessions_active 2.0\n"
    merged = _merged_metrics({"a": text, "b": text.replace("2.0", "3.0")}).decode()
    (family,) = text_string_to_metric_families(merged)
    assert {(s.labels["engine"], s.value) for s in family.samples} == {("a", 2.0), ("b", 3.0)}
