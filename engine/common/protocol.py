"""The engine-worker link's wire schema: every message that crosses it, and what both ends agree on.

Each message is a msgspec ``Struct`` tagged with its class name and encoded
with msgpack as the first frame of a ZeroMQ multipart message. Media rides in
the frame after it, untouched and encoded: the engine hands the worker each
complete frame its receivers reassemble (``AudioIn``, ``VideoIn``) and the
worker hands back the bot's encoded packets (``AudioOut``, ``VideoOut``). The
worker decodes and encodes; the engine only depacketizes and packetizes, and
a frame is a few kilobytes on the link, never raw pixels.

The schema is typed by direction: the engine decodes ``FromWorker``, a worker
decodes ``FromEngine``. Messages about one session derive from
``SessionMessage`` and are addressed by its ``session_id``, the peer's ``pc_id``.
"""

from enum import StrEnum
from typing import Any, Literal, NamedTuple

import msgspec

PeerState = Literal["new", "connecting", "connected", "disconnected", "closed", "failed"]


class MediaKind(StrEnum):
    """What a media stream carries."""

    AUDIO = "audio"
    VIDEO = "video"


class MediaSource(StrEnum):
    """One of the peer's sources, by the name Pipecat gives it."""

    MICROPHONE = "microphone"
    CAMERA = "camera"
    SCREEN_VIDEO = "screenVideo"

    @property
    def kind(self) -> MediaKind:
        """Audio for the microphone, video for the others."""
        return MediaKind.AUDIO if self is MediaSource.MICROPHONE else MediaKind.VIDEO


# The client's transceivers, in the order it adds them, and the source each carries.
AUDIO_TRANSCEIVER_INDEX = 0
VIDEO_TRANSCEIVER_INDEX = 1
SCREEN_VIDEO_TRANSCEIVER_INDEX = 2
SOURCE_BY_RECEIVER = {
    AUDIO_TRANSCEIVER_INDEX: MediaSource.MICROPHONE,
    VIDEO_TRANSCEIVER_INDEX: MediaSource.CAMERA,
    SCREEN_VIDEO_TRANSCEIVER_INDEX: MediaSource.SCREEN_VIDEO,
}
RECEIVER_BY_SOURCE = {source: index for index, source in SOURCE_BY_RECEIVER.items()}

# Encoded video a queue holds (about 130 ms at 30 fps), on either side of the
# link and either way, before frames are dropped and the receiving side waits
# for a keyframe (engine.common.keyframes).
VIDEO_QUEUE_FRAMES = 4
# Peer audio a queue holds, in 20 ms frames (500 ms), on either side of the
# link, before the oldest is dropped.
AUDIO_QUEUE_FRAMES = 25
# Audio crosses the link as Opus: one packet per 20 ms at 48 kHz, both ways.
OPUS_SAMPLE_RATE = 48000
OPUS_FRAME_MS = 20
# The engine acknowledges bot audio (``AudioOutAck``) every this many packets,
# and whenever its sender has taken the last one queued, instead of each 20 ms:
# a message and a wake-up on both sides per packet was most of what a voice
# session cost the link. The worker keeps at most AUDIO_OUT_WINDOW_MS of audio
# unacknowledged, which must cover one such stride and the way back.
AUDIO_OUT_ACK_EVERY = 3
AUDIO_OUT_WINDOW_MS = 100
# A video bitrate change smaller than this share is not acted on (as aiortc:
# it would reopen the encoder for nothing).
BITRATE_CHANGE_RATIO = 0.1


def bitrate_changed(current: int, new: int) -> bool:
    """Whether ``new`` differs from ``current`` enough to re-target the encoder."""
    return abs(new - current) > current * BITRATE_CHANGE_RATIO


class MediaLane(NamedTuple):
    """One media stream of one session in a mailbox: bounded on its own, forgotten with its session.

    ``source`` is the peer's source, or None for the bot's own output.
    """

    session_id: str
    kind: MediaKind
    source: MediaSource | None = None


class SessionMessage(msgspec.Struct, frozen=True):
    """Any message about one session, addressed by its ``session_id``."""

    session_id: str


# ---- the worker and its link ----


class WorkerRegister(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine, first: who the worker is and how many sessions it takes."""

    worker_id: str
    pid: int
    hostname: str
    capacity: int


class WorkerAccept(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: registration accepted; the worker may now be given sessions."""

    engine_id: str


class WorkerHeartbeat(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine, every second: the worker lives, its load, whether it drains, and the sessions it runs."""

    loop_lag_ms: float
    cpu_share: float = 0.0
    frames_dropped: int = 0
    draining: bool = False
    session_ids: tuple[str, ...] = ()
    rss_mb: float = 0.0


class EngineHeartbeat(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker, every second: the engine lives (a worker that stops hearing it leaves)."""


class WorkerStop(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: end every session and exit."""

    reason: str


class WorkerDrain(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: take no new session, and exit once the last one ends (the worker is being replaced)."""

    reason: str


# ---- a session's life ----


class SessionOpen(SessionMessage, tag=True, frozen=True):
    """Engine to worker: run a new bot for this peer."""

    runner_session_id: str
    body: Any = None


class SessionClose(SessionMessage, tag=True, frozen=True):
    """Either way: the session is over (engine: the peer is gone; worker: the bot ended or failed)."""

    reason: str


class SessionConnect(SessionMessage, tag=True, frozen=True):
    """Worker to engine: the bot's transport is ready for the peer (Pipecat's ``connection.connect()``)."""


class PeerStateChange(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the peer's connection state as the bot should see it."""

    state: PeerState


class PeerRenegotiate(SessionMessage, tag=True, frozen=True):
    """Worker to engine: ask the peer for a new offer (stale video is dropped first)."""


class TrackStatusChange(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the peer turned a source on or off (``trackStatus`` signalling)."""

    receiver_index: int
    enabled: bool


class AppMessageIn(SessionMessage, tag=True, frozen=True):
    """Engine to worker: an application message from the peer's data channel, as JSON text."""

    json: str


class AppMessageOut(SessionMessage, tag=True, frozen=True):
    """Worker to engine: an application message for the peer, as JSON text."""

    json: str


# ---- the peer's media, to the bot ----


class MediaCaptureSet(SessionMessage, tag=True, frozen=True):
    """Worker to engine: forward this source's frames, or stop (a source nobody captures is not even received)."""

    source: MediaSource
    enabled: bool


class AudioIn(SessionMessage, tag=True, frozen=True):
    """Engine to worker: one encoded frame of peer audio (usually 20 ms of Opus); it follows in one frame."""

    mime_type: str
    pts: int


class VideoIn(SessionMessage, tag=True, frozen=True):
    """Engine to worker: one complete encoded frame of a peer video source; its bitstream follows in one frame.

    ``index`` counts the source's frames, so a gap (a dropped frame, or a
    stream that resumed mid-way) shows and the worker waits for a keyframe.
    """

    source: MediaSource
    mime_type: str
    index: int
    pts: int


class VideoInBacklog(SessionMessage, tag=True, frozen=True):
    """Engine to worker: a peer video source's frames from its last keyframe on, kept until the bot captured it; one bitstream per frame follows.

    They are numbered from ``first_index`` and stamped ``pts``; the source's
    ``VideoIn`` frames continue the numbering. The bot so starts from the
    picture the peer sent last, without asking it for a keyframe.
    """

    source: MediaSource
    mime_type: str
    first_index: int
    pts: tuple[int, ...]


class VideoInKeyframeRequest(SessionMessage, tag=True, frozen=True):
    """Worker to engine: a peer video source cannot be decoded (a start, a gap, an error); ask the peer for a keyframe."""

    source: MediaSource


# ---- the bot's media, to the peer ----


class OutputOpen(SessionMessage, tag=True, frozen=True):
    """Worker to engine: attach the bot's output tracks (audio, video or both)."""

    audio: bool
    audio_auto_silence: bool
    video: bool


class AudioOut(SessionMessage, tag=True, frozen=True):
    """Worker to engine: 20 ms of bot audio as one Opus packet, which follows in one frame."""

    seq: int


class AudioOutAck(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the audio up to ``seq`` has been taken by the sender (or dropped); sent every ``AUDIO_OUT_ACK_EVERY`` packets and when the sender's queue runs dry."""

    seq: int


class AudioOutClear(SessionMessage, tag=True, frozen=True):
    """Worker to engine: the bot was interrupted; drop the bot audio not yet sent to the peer."""


class VideoOut(SessionMessage, tag=True, frozen=True):
    """Worker to engine: a bot video frame in the negotiated codec; its bitstream follows in one frame.

    ``index`` counts the session's encoded frames, so a gap (a dropped frame)
    shows and the engine can wait for a keyframe instead of sending a broken picture.
    """

    index: int
    keyframe: bool


class VideoEncoderSettings(msgspec.Struct, frozen=True):
    """How a worker encodes the bot's video: the engine's ``video_*`` settings, so every worker encodes alike.

    The defaults are aiortc's own encoder settings, but for libvpx's denoiser,
    which is off (measured cheaper and sharper, even on a grainy picture). A bitrate of 0 is the
    negotiated codec's own bound (aiortc's: VP8 250 kbit/s to 1.5 Mbit/s from
    500 kbit/s, H264 500 kbit/s to 3 Mbit/s from 1 Mbit/s); the peer's
    bandwidth estimate moves the bitrate within the bounds.

    Parameters:
        vp8_cpu_used: libvpx's ``cpu-used`` speed (-16..16; a larger magnitude is faster and coarser).
        vp8_noise_sensitivity: libvpx's denoiser strength (0 off .. 6).
        h264_preset: libx264's preset (``ultrafast`` .. ``placebo``); empty for libx264's own (``medium``).
        min_bitrate: The lowest bitrate, in bits per second.
        max_bitrate: The highest bitrate.
        start_bitrate: The bitrate before the peer's first estimate.
        static_refine_frames: How many more times an unchanged picture is encoded (the encoder
            sharpens it frame by frame) before it is no longer encoded at all.
        static_refresh_s: After that, one encode of it every this many seconds, so the peer's
            receiver keeps getting frames (0: never).
    """

    vp8_cpu_used: int = -6
    vp8_noise_sensitivity: int = 0
    h264_preset: str = ""
    min_bitrate: int = 0
    max_bitrate: int = 0
    start_bitrate: int = 0
    static_refine_frames: int = 150
    static_refresh_s: float = 1.0


class VideoOutCodecSet(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the peer's connection negotiated this video codec; encode bot video in it, as ``encoder`` says."""

    mime_type: str
    encoder: VideoEncoderSettings = msgspec.field(default_factory=VideoEncoderSettings)


class VideoOutKeyframeRequest(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the peer lost its picture or a frame was dropped on the way; send a keyframe."""


class VideoOutBitrateSet(SessionMessage, tag=True, frozen=True):
    """Engine to worker: the peer's bandwidth estimate changed; encode bot video at this bitrate."""

    bitrate: int


FromWorker = (
    WorkerRegister
    | WorkerHeartbeat
    | SessionClose
    | SessionConnect
    | PeerRenegotiate
    | AppMessageOut
    | MediaCaptureSet
    | VideoInKeyframeRequest
    | OutputOpen
    | AudioOut
    | AudioOutClear
    | VideoOut
)
"""What a worker sends, and the engine decodes."""

FromEngine = (
    WorkerAccept
    | EngineHeartbeat
    | WorkerStop
    | WorkerDrain
    | SessionOpen
    | SessionClose
    | PeerStateChange
    | TrackStatusChange
    | AppMessageIn
    | AudioIn
    | VideoIn
    | VideoInBacklog
    | AudioOutAck
    | VideoOutCodecSet
    | VideoOutKeyframeRequest
    | VideoOutBitrateSet
)
"""What the engine sends, and a worker decodes."""

Message = FromWorker | FromEngine

_encoder = msgspec.msgpack.Encoder()
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_from_engine = msgspec.msgpack.Decoder(FromEngine)


def encode(message: Message) -> bytes:
    """The header frame for a message."""
    return _encoder.encode(message)


def decode_from_worker(header: bytes | memoryview) -> FromWorker:
    """The message in a header frame a worker sent.

    Raises:
        msgspec.DecodeError: If the frame is not a message a worker sends.
    """
    return _from_worker.decode(header)


def decode_from_engine(header: bytes | memoryview) -> FromEngine:
    """The message in a header frame the engine sent.

    Raises:
        msgspec.DecodeError: If the frame is not a message the engine sends.
    """
    return _from_engine.decode(header)
