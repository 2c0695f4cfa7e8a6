"""Configuration: file, then environment, then flags; bad settings are named."""

import pytest
from pydantic import ValidationError

from engine.common.settings import (
    DEFAULT_CONFIG_FILE,
    HostSettings,
    load_settings,
    parse_port_range,
)


def test_the_default_file_documents_every_option():
    text = DEFAULT_CONFIG_FILE.read_text()
    for name in HostSettings.model_fields:
        assert f"\n{name} = " in text or f"\n# {name} = " in text, f"config/host.toml lacks {name}"


def test_file_then_env_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "host.toml"
    config.write_text('port = 1000\nworkers = 3\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("SMALLWEBRTC_HOST_WORKERS", "5")
    monkeypatch.setenv("SMALLWEBRTC_HOST_PORT", "2000")
    settings = load_settings(str(config), port=3000)
    assert (settings.port, settings.workers, settings.log_level) == (3000, 5, "DEBUG")


def test_cli_lists(monkeypatch):
    monkeypatch.delenv("SMALLWEBRTC_HOST_CONFIG", raising=False)
    settings = load_settings(ice_host_addresses="127.0.0.1, ::1", ice_servers="stun:a:1,turn:b:2")
    assert settings.ice_host_addresses == ["127.0.0.1", "::1"]
    assert [s.urls for s in settings.ice_servers] == ["stun:a:1", "turn:b:2"]


def test_turn_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        "SMALLWEBRTC_HOST_ICE_SERVERS", '[{"urls": "turn:t:3478", "username": "u", "credential": "p"}]'
    )
    server = HostSettings().ice_servers[0]
    assert server.to_client() == {"urls": "turn:t:3478", "username": "u", "credential": "p"}


@pytest.mark.parametrize(
    "field, value",
    [
        ("port", 70000),
        ("sctp_max_chunk_size", 5000),
        ("connection_mode", "some"),
        ("max_request_body_bytes", 100),
        ("max_media_sections", 0),
        ("start_rate_per_minute", -1),
        ("max_data_channel_messages_per_s", 0),
    ],
)
def test_invalid_settings_name_the_setting(field, value):
    with pytest.raises(ValidationError, match=field):
        load_settings(**{field: value})


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7861", "ipc://@smallwebrtc-engine"])
def test_an_endpoint_other_users_reach_needs_curve_keys(endpoint):
    # An abstract ipc socket has no file, so no permissions: any local user may connect to it.
    with pytest.raises(ValidationError, match="curve_secret_key_file"):
        load_settings(engine_endpoint=endpoint)
    load_settings(engine_endpoint=endpoint, curve_secret_key_file="engine.key_secret", curve_authorized_keys_dir="keys")


def test_unknown_setting_in_the_file_is_refused(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(str(config))


def test_missing_config_file():
    with pytest.raises(FileNotFoundError):
        load_settings("/nonexistent/host.toml")


def test_pipecats_sctp_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("PIPECAT_SCTP_MAX_CHUNK_SIZE", "1000")
    assert load_settings().sctp_max_chunk_size == 1000
    monkeypatch.setenv("SMALLWEBRTC_HOST_SCTP_MAX_CHUNK_SIZE", "900")
    assert load_settings().sctp_max_chunk_size == 900


@pytest.mark.parametrize("text", ["40000", "50-60", "40010-40000", "1-70000x"])
def test_bad_port_ranges(text):
    with pytest.raises(ValueError, match="ice_udp_port_range"):
        parse_port_range(text)
