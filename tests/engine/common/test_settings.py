"""Configuration: file, then environment, then flags; bad settings are named."""

import pytest
from pydantic import ValidationError

from engine.common.protocol import VideoEncoderSettings
from engine.common.settings import (
    DEFAULT_CONFIG_FILE,
    DEMO_BOT,
    HostSettings,
    load_runner_body,
    load_settings,
    parse_port_range,
)

TURN = {"urls": "turn:t:3478", "username": "u", "credential": "p"}
TURN_JSON = '{"urls": "turn:t:3478", "username": "u", "credential": "p"}'


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
        # It ends at the first "-" of the ids that carry it.
        ("host_id", "lb-a"),
        ("host_id", "a" * 65),
        ("video_codec_preference", ["VP8", "AV1"]),
        ("video_vp8_cpu_used", 17),
        ("video_vp8_noise_sensitivity", 7),
        ("video_h264_preset", "quick"),
        ("video_min_bitrate", -1),
        ("video_static_refresh_s", -1),
    ],
)
def test_invalid_settings_name_the_setting(field, value):
    with pytest.raises(ValidationError, match=field):
        load_settings(**{field: value})


def test_the_video_encoder_settings_the_engine_sends_the_workers(monkeypatch):
    # By default, aiortc's: what Pipecat's own transport encodes with.
    assert load_settings().video_encoder == VideoEncoderSettings()
    monkeypatch.setenv("SMALLWEBRTC_HOST_VIDEO_CODEC_PREFERENCE", '["h264", "vp8"]')
    settings = load_settings(video_vp8_cpu_used=-10, video_h264_preset="veryfast", video_max_bitrate=800_000)

    assert settings.video_codec_preference == ["H264", "VP8"]
    assert settings.video_encoder == VideoEncoderSettings(vp8_cpu_used=-10, h264_preset="veryfast", max_bitrate=800_000)


def test_video_bitrates_given_must_be_in_order():
    load_settings(video_min_bitrate=300_000, video_max_bitrate=300_000)
    load_settings(video_start_bitrate=2_000_000)  # above VP8's own maximum: the encoder keeps it within
    with pytest.raises(ValidationError, match=r"video_start_bitrate \(900000\) <= video_max_bitrate \(800000\)"):
        load_settings(video_start_bitrate=900_000, video_max_bitrate=800_000)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7861", "ipc://@smallwebrtc-engine"])
def test_an_endpoint_other_users_reach_needs_curve_keys(endpoint):
    # An abstract ipc socket has no file, so no permissions: any local user may connect to it.
    with pytest.raises(ValidationError, match="curve_secret_key_file"):
        load_settings(engine_endpoint=endpoint)
    load_settings(engine_endpoint=endpoint, curve_secret_key_file="engine.key_secret", curve_authorized_keys_dir="keys")


def test_a_turn_secret_takes_turn_servers_without_static_credentials():
    with pytest.raises(ValidationError, match="leave them out of ice_servers"):
        load_settings(turn_shared_secret="s", ice_servers=[TURN_JSON])
    settings = load_settings(turn_shared_secret="s", ice_servers=["stun:a:1", "turn:t:3478?transport=tcp"])
    assert [server.is_turn for server in settings.ice_servers] == [False, True]


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


@pytest.mark.parametrize(
    "value, servers",
    [
        # Ours, and PIPECAT_ICE_SERVERS: comma-separated URLs.
        ("stun:a:1, stun:b:2", [{"urls": "stun:a:1"}, {"urls": "stun:b:2"}]),
        # PIPECAT_ICE_SERVERS: a JSON array, or one JSON object.
        (f'[{TURN_JSON}, "stun:a:1"]', [TURN, {"urls": "stun:a:1"}]),
        (TURN_JSON, [TURN]),
        # --ice-servers as the runner takes it: one URL or JSON object per argument.
        (["stun:a:1", TURN_JSON], [{"urls": "stun:a:1"}, TURN]),
        ([], []),
    ],
)
def test_ice_servers_as_pipecats_runner_writes_them(value, servers):
    assert [s.to_client() for s in load_settings(ice_servers=value).ice_servers] == servers


@pytest.mark.parametrize("value", ['{"urls": "turn:t:3478", "user": "u"}', "[not json", '{"username": "u"}'])
def test_a_malformed_ice_server_names_the_setting(value):
    with pytest.raises(ValidationError, match="ice_servers"):
        load_settings(ice_servers=value)


def test_pipecats_variables_come_after_the_file_and_before_the_hosts_own(tmp_path, monkeypatch):
    config = tmp_path / "host.toml"
    config.write_text('ice_servers = ["stun:file:1"]\nallowed_origins = ["https://file.example"]\n')
    assert load_settings(str(config)).allowed_origins == ["https://file.example"]
    monkeypatch.setenv("PIPECAT_ICE_SERVERS", TURN_JSON)
    monkeypatch.setenv("PIPECAT_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    settings = load_settings(str(config))
    assert [s.to_client() for s in settings.ice_servers] == [TURN]
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("SMALLWEBRTC_HOST_ALLOWED_ORIGINS", '["https://host.example"]')
    assert load_settings(str(config)).allowed_origins == ["https://host.example"]
    assert load_settings(str(config), allowed_origins=["https://flag.example"]).allowed_origins == ["https://flag.example"]


def test_the_runner_body_is_yaml_or_json(tmp_path):
    assert load_runner_body("") is None
    (tmp_path / "body.yaml").write_text("image: pictures/cat.png\nsizes: [1, 2]\n")
    assert load_runner_body(str(tmp_path / "body.yaml")) == {"image": "pictures/cat.png", "sizes": [1, 2]}
    (tmp_path / "body.json").write_text('{"video": false}')
    assert load_runner_body(str(tmp_path / "body.json")) == {"video": False}
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    for path in (tmp_path / "missing.json", tmp_path / "bad.yaml"):
        with pytest.raises(ValueError, match="runner_body"):
            load_runner_body(str(path))


@pytest.mark.parametrize("text", ["40000", "50-60", "40010-40000", "1-70000x"])
def test_bad_port_ranges(text):
    with pytest.raises(ValueError, match="ice_udp_port_range"):
        parse_port_range(text)


def test_with_no_bot_configured_the_bot_py_of_the_current_directory_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings().bot == DEMO_BOT
    (tmp_path / "bot.py").write_text("async def bot(runner_args): ...\n")
    assert load_settings().bot == f"{tmp_path}/bot.py:bot"


@pytest.mark.parametrize(
    "spec, resolved",
    [
        ("bots/my-bot.py", "{cwd}/bots/my-bot.py:bot"),
        ("./bots/my-bot.py:run", "{cwd}/bots/my-bot.py:run"),
        ("{cwd}/bots/my-bot.py", "{cwd}/bots/my-bot.py:bot"),
        ("mypackage.mybot", "mypackage.mybot:bot"),
        ("mypackage.mybot:run", "mypackage.mybot:run"),
    ],
)
def test_a_bot_is_a_module_or_a_file_found_from_the_current_directory(tmp_path, monkeypatch, spec, resolved):
    (tmp_path / "bots").mkdir()
    (tmp_path / "bots" / "my-bot.py").write_text("async def bot(runner_args): ...\n")
    monkeypatch.chdir(tmp_path)
    # Workers may run in another directory: they get the absolute path.
    assert load_settings(bot=spec.format(cwd=tmp_path)).bot == resolved.format(cwd=tmp_path)


@pytest.mark.parametrize("spec", ["no-such-bot.py", "bots/missing.py:bot", ":bot", "mybot:", "mybot:not-a-name"])
def test_a_bot_that_is_missing_or_malformed_is_refused_naming_the_setting(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="bot"):
        load_settings(bot=spec)
