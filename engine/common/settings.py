"""Host configuration: the defaults file, then environment variables, then CLI flags.

Every option is documented in ``config/host.toml``; another file can be named
with ``--config`` or ``SMALLWEBRTC_HOST_CONFIG``. Environment variables are
the option names in upper case with the prefix ``SMALLWEBRTC_HOST_`` (lists as
JSON, e.g. ``SMALLWEBRTC_HOST_ICE_HOST_ADDRESSES='["127.0.0.1"]'``). The
variables Pipecat's development runner reads (``PIPECAT_ICE_SERVERS``,
``PIPECAT_ALLOWED_ORIGINS``, ``PIPECAT_SCTP_MAX_CHUNK_SIZE``) set the same
options, below the host's own variables.
"""

import ipaddress
import json
import os
import re
import sys
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from aiortc import RTCIceServer
from loguru import logger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.common.protocol import VideoEncoderSettings

# config/host.toml, shipped in the package (a link to it in a checkout) so an installed host finds it too.
DEFAULT_CONFIG_FILE = Path(__file__).resolve().with_name("host.toml")
# The environment variables of Pipecat's development runner (and transport) that set an option here.
PIPECAT_VARIABLES = {
    "PIPECAT_ICE_SERVERS": "ice_servers",
    "PIPECAT_ALLOWED_ORIGINS": "allowed_origins",
    "PIPECAT_SCTP_MAX_CHUNK_SIZE": "sctp_max_chunk_size",
}
# The codecs video_codec_preference may name (those the workers encode), and libx264's presets.
VIDEO_CODEC_NAMES = ("VP8", "H264")
H264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
# With no bot configured: the current directory's bot.py, as Pipecat's runner finds it, else the demo bot.
DEFAULT_BOT_FILE = "bot.py"
DEFAULT_BOT_FUNCTION = "bot"
DEMO_BOT = "workers.demo_bot:bot"
# The file load_settings() was asked to read, for the settings being built now.
_config_file: ContextVar[str | None] = ContextVar("config_file", default=None)


class IceServer(BaseModel):
    """A STUN or TURN server, as configured and as handed to clients by ``/start``.

    Parameters:
        urls: One URL or several (``stun:host:port``, ``turn:host:port?transport=udp``).
        username: TURN username.
        credential: TURN password.
    """

    # As Pipecat's runner: a misspelt key is an error, not a TURN server without credentials.
    model_config = ConfigDict(extra="forbid")

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None

    def to_rtc(self) -> RTCIceServer:
        """The aiortc form of this server."""
        return RTCIceServer(urls=self.urls, username=self.username, credential=self.credential)

    def to_client(self) -> dict:
        """The form a browser's ``RTCPeerConnection`` takes, without unset fields."""
        return self.model_dump(exclude_none=True)

    @property
    def is_turn(self) -> bool:
        """Whether this is a TURN server (a ``turn:`` or ``turns:`` URL)."""
        urls = [self.urls] if isinstance(self.urls, str) else self.urls
        return any(url.startswith(("turn:", "turns:")) for url in urls)


def parse_port_range(text: str) -> tuple[int, int] | None:
    """``"40000-40999"`` as (40000, 40999); an empty string as None.

    Raises:
        ValueError: If the text is not such a range of valid ports.
    """
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not match or not 1024 <= int(match[1]) <= int(match[2]) <= 65535:
        raise ValueError(f"ice_udp_port_range: {text!r} is not a range like 40000-40999 within 1024-65535")
    return int(match[1]), int(match[2])


class BotSpec(NamedTuple):
    """Where the bot is: an importable module or a Python file, and the function in it.

    Parameters:
        location: ``package.module``, or a path to a ``.py`` file (any name).
        function: The ``async def bot(runner_args)`` to call; ``bot``, as Pipecat's runner looks it up.
    """

    location: str
    function: str = DEFAULT_BOT_FUNCTION

    @classmethod
    def parse(cls, spec: str) -> "BotSpec":
        """``package.module[:function]`` or ``path/to/file.py[:function]``.

        Raises:
            ValueError: If the spec is empty or its function is not a Python name.
        """
        location, colon, function = spec.rpartition(":")
        if not colon:
            location, function = spec, DEFAULT_BOT_FUNCTION
        if not location or not function.isidentifier():
            raise ValueError(
                f"bot {spec!r} is not of the form package.module[:function] or path/to/file.py[:function]"
            )
        return cls(location, function)

    @property
    def is_file(self) -> bool:
        """Whether ``location`` is a file rather than a module."""
        return self.location.endswith(".py") or "/" in self.location

    def __str__(self) -> str:
        return f"{self.location}:{self.function}"


def resolve_bot(spec: str) -> str:
    """The bot to run, as ``location:function`` with a file's path made absolute.

    A relative file is found from the current directory, so the workers of an
    engine find the bot it was told, wherever they run. With no spec: the
    current directory's ``bot.py`` if there is one, else the demo bot.

    Raises:
        ValueError: If the spec is malformed or names a file that does not exist.
    """
    if not spec:
        default_file = Path(DEFAULT_BOT_FILE)
        return str(BotSpec(str(default_file.resolve()))) if default_file.is_file() else DEMO_BOT
    bot = BotSpec.parse(spec)
    if not bot.is_file:
        return str(bot)
    path = Path(bot.location).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"bot file {bot.location} does not exist (looked for {path})")
    return str(BotSpec(str(path), bot.function))


def parse_ice_servers(value: Any) -> Any:
    """ICE servers written as Pipecat's runner takes them, as a list of URLs and server objects.

    A string is a JSON array, one JSON object, or comma-separated URLs
    (``PIPECAT_ICE_SERVERS``); a list holds such strings, one per
    ``--ice-servers`` argument, or server objects (a configuration file).
    Anything else is returned as it is, for the model to refuse.

    Raises:
        ValueError: If a JSON entry does not parse.
    """
    if isinstance(value, str):
        value = _ice_server_json(value) if value.strip().startswith("[") else [value]
    if not isinstance(value, list):
        return value
    servers = []
    for entry in value:
        if not isinstance(entry, str):
            servers.append(entry)
        elif entry.strip().startswith("{"):
            servers.append(_ice_server_json(entry))
        else:
            servers.extend({"urls": url.strip()} for url in entry.split(",") if url.strip())
    return servers


def _ice_server_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"ice_servers: {text!r} is not JSON: {e}") from e


def load_runner_body(path: str) -> Any:
    """The contents of a ``--runner-body`` file (YAML or JSON, as Pipecat's runner reads it); None without one.

    Raises:
        ValueError: If the file cannot be read or parsed; the message names the setting.
    """
    if not path:
        return None
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"runner_body: cannot read {path}: {e}") from e


class PipecatVariables(PydanticBaseSettingsSource):
    """The options set by Pipecat's own environment variables (``PIPECAT_VARIABLES``), as raw strings."""

    def get_field_value(self, field, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` reads every variable at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, str]:
        return {option: os.environ[name] for name, option in PIPECAT_VARIABLES.items() if os.environ.get(name)}


class ConnectionMode(str, Enum):
    """How many peers the host takes at once."""

    SINGLE = "single"
    MULTIPLE = "multiple"


class HostSettings(BaseSettings):
    """Everything the engine and its workers are configured with."""

    model_config = SettingsConfigDict(env_prefix="SMALLWEBRTC_HOST_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    host_id: str = ""
    workers: int = Field(-1, ge=-1)
    engines: int = Field(1, ge=1)
    worker_capacity: int = Field(4, ge=1)
    worker_memory_limit_mb: int = Field(0, ge=0)
    bot: str = Field("", validate_default=True)
    engine_endpoint: str = ""
    curve_secret_key_file: str = ""
    curve_server_key_file: str = ""
    curve_authorized_keys_dir: str = ""
    ice_servers: list[IceServer] = []
    ice_host_addresses: list[str] = []
    ice_announced_address: str = ""
    ice_udp_port_range: str = ""
    turn_shared_secret: str = ""
    turn_credential_ttl_s: float = Field(86400.0, gt=0)
    sctp_max_chunk_size: int = Field(1100, ge=256, le=1200)
    connection_mode: ConnectionMode = ConnectionMode.MULTIPLE
    esp32: bool = False
    connecting_timeout_s: float = Field(30.0, gt=0)
    data_channel_timeout_s: float = Field(10.0, gt=0)
    ping_window_s: float = Field(3.0, gt=0)
    peer_lost_close_s: float = Field(10.0, ge=0)
    restart_grace_s: float = Field(2.0, ge=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    worker_dead_after_s: float = Field(3.0, gt=0)
    engine_silent_after_s: float = Field(10.0, gt=0)
    bot_end_grace_s: float = Field(5.0, ge=0)
    drain_timeout_s: float = Field(3600.0, ge=0)
    max_request_body_bytes: int = Field(256 * 1024, ge=4096)
    max_media_sections: int = Field(8, ge=1, le=1000)
    max_candidates_per_request: int = Field(50, ge=1)
    max_candidates_per_peer: int = Field(200, ge=1)
    mdns_resolve_timeout_s: float = Field(1.0, gt=0)
    start_session_ttl_s: float = Field(300.0, gt=0)
    start_rate_per_minute: int = Field(60, ge=0)
    max_data_channel_message_bytes: int = Field(64 * 1024, ge=1024)
    max_data_channel_messages_per_s: int = Field(50, ge=1)
    max_data_channel_buffered_bytes: int = Field(1024 * 1024, ge=64 * 1024)
    allowed_origins: list[str] = []
    runner_body: str = ""
    api_token: str = ""
    admin_token: str = ""
    log_level: str = "INFO"
    log_json: bool = False
    video_codec_preference: list[str] = []
    video_vp8_cpu_used: int = Field(-6, ge=-16, le=16)
    video_vp8_noise_sensitivity: int = Field(0, ge=0, le=6)
    video_h264_preset: str = ""
    video_min_bitrate: int = Field(0, ge=0)
    video_max_bitrate: int = Field(0, ge=0)
    video_start_bitrate: int = Field(0, ge=0)
    video_static_refine_frames: int = Field(150, ge=0)
    video_static_refresh_s: float = Field(1.0, ge=0)

    @field_validator("bot")
    @classmethod
    def _resolved_bot(cls, value: str) -> str:
        return resolve_bot(value)

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _runner_syntax(cls, value):
        return parse_ice_servers(value)

    @field_validator("ice_host_addresses", "allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, value):
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("host_id")
    @classmethod
    def _valid_host_id(cls, value: str) -> str:
        # It starts every pc_id and /start session id up to their first "-", so it holds none.
        if not re.fullmatch(r"[A-Za-z0-9_.]{0,64}", value):
            raise ValueError(f"host_id: {value!r} is not 1-64 letters, digits, '_' or '.' (no '-')")
        return value

    @field_validator("video_codec_preference")
    @classmethod
    def _known_codecs(cls, value: list[str]) -> list[str]:
        names = []
        for name in value:
            known = next((codec for codec in VIDEO_CODEC_NAMES if codec.lower() == name.lower()), None)
            if known is None:
                raise ValueError(f"video_codec_preference: {name!r} is not one of {', '.join(VIDEO_CODEC_NAMES)}")
            names.append(known)
        return names

    @field_validator("video_h264_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value and value not in H264_PRESETS:
            raise ValueError(f"video_h264_preset: {value!r} is not one of libx264's ({', '.join(H264_PRESETS)})")
        return value

    @model_validator(mode="after")
    def _bitrates_in_order(self) -> "HostSettings":
        # 0 is the codec's own bound: only the bitrates given must be in order.
        given = {
            name: rate
            for name, rate in (
                ("video_min_bitrate", self.video_min_bitrate),
                ("video_start_bitrate", self.video_start_bitrate),
                ("video_max_bitrate", self.video_max_bitrate),
            )
            if rate
        }
        if list(given.values()) != sorted(given.values()):
            order = " <= ".join(f"{name} ({rate})" for name, rate in given.items())
            raise ValueError(f"video bitrates: {order} does not hold")
        return self

    @field_validator("ice_udp_port_range")
    @classmethod
    def _valid_port_range(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @field_validator("ice_announced_address")
    @classmethod
    def _valid_announced_address(cls, value: str) -> str:
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError as e:
                raise ValueError(f"ice_announced_address: {value!r} is not an IP address") from e
        return value

    @model_validator(mode="after")
    def _open_endpoint_needs_curve(self) -> "HostSettings":
        # Other machines reach a tcp:// endpoint, and every local user an abstract ipc://@ one
        # (it has no file, so no permissions): only keys tell workers from strangers there.
        if self.engine_endpoint.startswith(("tcp://", "ipc://@")) and not (
            self.curve_secret_key_file and self.curve_authorized_keys_dir
        ):
            raise ValueError(
                "engine_endpoint: a tcp:// (or abstract ipc://@) endpoint needs curve_secret_key_file and "
                "curve_authorized_keys_dir, so only workers with an accepted key can join "
                "(make keys with 'smallwebrtc-host keys')"
            )
        return self

    @model_validator(mode="after")
    def _turn_secret_or_static_credentials(self) -> "HostSettings":
        # Only a static password is refused: a worker, told no ice_servers, may share the engine's secret.
        if self.turn_shared_secret and any(
            server.is_turn and (server.username or server.credential) for server in self.ice_servers
        ):
            raise ValueError(
                "turn_shared_secret: the host mints the TURN servers' usernames and credentials from it; "
                "leave them out of ice_servers"
            )
        return self

    @model_validator(mode="after")
    def _engines_have_workers(self) -> "HostSettings":
        if self.engines > 1 and self.worker_count and self.engines > self.worker_count:
            raise ValueError(
                f"engines: {self.engines} engines would share {self.worker_count} local workers; "
                "each engine needs one at least (or workers = 0 for remote workers only)"
            )
        return self

    @property
    def video_encoder(self) -> VideoEncoderSettings:
        """The ``video_*`` settings the engine sends each worker with the negotiated codec."""
        return VideoEncoderSettings(
            vp8_cpu_used=self.video_vp8_cpu_used,
            vp8_noise_sensitivity=self.video_vp8_noise_sensitivity,
            h264_preset=self.video_h264_preset,
            min_bitrate=self.video_min_bitrate,
            max_bitrate=self.video_max_bitrate,
            start_bitrate=self.video_start_bitrate,
            static_refine_frames=self.video_static_refine_frames,
            static_refresh_s=self.video_static_refresh_s,
        )

    @property
    def worker_count(self) -> int:
        """Local workers to start: the setting, or one per core for -1."""
        return self.workers if self.workers >= 0 else os.cpu_count() or 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        """CLI flags (passed as init arguments) win over the environment, which wins over the file.

        The host's own variables win over Pipecat's, which name the same options for every bot.
        """
        config_file = Path(_config_file.get() or os.environ.get("SMALLWEBRTC_HOST_CONFIG") or DEFAULT_CONFIG_FILE)
        sources = [init_settings, env_settings, PipecatVariables(settings_cls)]
        if config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def load_settings(config_file: str | None = None, **overrides) -> HostSettings:
    """Settings from ``config_file`` (or the default file), the environment and ``overrides``.

    Args:
        config_file: A TOML file in the format of ``config/host.toml``.
        **overrides: CLI flags; ``None`` values are ignored.

    Raises:
        FileNotFoundError: If ``config_file`` does not exist.
        pydantic.ValidationError: If a setting is invalid; the message names it.
    """
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return HostSettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)


def settings_or_exit(program: str, config_file: str | None = None, **overrides) -> HostSettings:
    """``load_settings``, or exit the program naming the setting that is invalid."""
    try:
        return load_settings(config_file, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as e:
        sys.exit(f"{program}: invalid configuration: {e}")


def configure_logging(settings: HostSettings) -> None:
    """One stderr sink for this process: text, or JSON lines carrying pc_id and worker_id."""
    logger.remove()
    logger.add(sys.stderr, level=settings.log_level.upper(), serialize=settings.log_json)
