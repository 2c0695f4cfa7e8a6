"""The engine-worker link: every message that crosses it, in one place.

Each message is a msgspec ``Struct`` tagged with its class name and encoded
with msgpack as the first frame of a ZeroMQ multipart message. Media rides in
the frame after it, untouched and encoded: the engine hands the worker each
complete frame its receivers reassemble (``AudioIn``, ``VideoIn``) and the
worker hands back the bot's encoded packets (``AudioOut``, ``VideoOut``). The
worker decodes and encodes; the engine only depacketizes and packetizes, and
a frame is a few kilobytes on the link, never raw pixels.

Sessions are addressed by ``session_id``, which is the peer's ``pc_id``.
"""

from typing import Any, Literal

import msgspec

PeerState = Literal["new", "connecting", "connected", "disconnected", "closed", "failed"]

# The client's transceivers, in the order it adds them, and the media source
# each one carries; sessions name their sources with these words.
AUDIO_TRANSCEIVER_INDEX = 0
VIDEO_TRANSCEIVER_INDEX = 1
SCREEN_VIDEO_TRANSCEIVER_INDEX = 2
MIC_AUDIO_SOURCE = "microphone"
CAM_VIDEO_SOURCE = "camera"
SCREEN_VIDEO_SOURCE = "screenVideo"
SOURCE_BY_RECEIVER = {
    AUDIO_TRANSCEIVER_INDEX: MIC_AUDIO_SOURCE,
    VIDEO_TRANSCEIVER_INDEX: CAM_VIDEO_SOURCE,
    SCREEN_VIDEO_TRANSCEIVER_INDEX: SCREEN_VIDEO_SOURCE,
}
# Encoded video a queue holds (about 130 ms at 30 fps), on either side of the
# link and either way, before frames are dropped and the receiving side waits
# for a keyframe (engine.keyframes).
VIDEO_QUEUE_FRAMES = 4


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
    """Worker to engine, every second: the worker lives, its load, and whether it drains."""

    sessions: int
    loop_lag_ms: float
    cpu_share: float = 0.0
    frames_dropped: int = 0
    draining: bool = False


class EngineHeartbeat(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker, every second: the engine lives (a worker that stops hearing it leaves)."""


class WorkerStop(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: end every session and exit."""

    reason: str


class SessionOpen(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: run a new bot for this peer."""

    session_id: str
    runner_session_id: str
    body: Any = None


class SessionClose(msgspec.Struct, tag=True, frozen=True):
    """Either way: the session is over (engine: the peer is gone; worker: the bot ended or failed)."""

    session_id: str
    reason: str


class SessionConnect(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: the bot's transport is ready for the peer (Pipecat's ``connection.connect()``)."""

    session_id: str


class PeerStateChange(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the peer's connection state as the bot should see it."""

    session_id: str
    state: PeerState


class TrackStatusChange(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the peer turned a source on or off (``trackStatus`` signalling)."""

    session_id: str
    receiver_index: int
    enabled: bool


class AppMessageIn(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: an application message from the peer's data channel, as JSON text."""

    session_id: str
    json: str


class AppMessageOut(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: an application message for the peer, as JSON text."""

    session_id: str
    json: str


class PeerRenegotiate(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: ask the peer for a new offer (stale video is dropped first)."""

    session_id: str


class MediaCaptureSet(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: forward this source's frames, or stop (a source nobody captures is not even received)."""

    session_id: str
    source: str
    enabled: bool


class PeerKeyframeRequest(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: a peer video source cannot be decoded (a start, a gap, an error); ask the peer for a keyframe."""

    session_id: str
    source: str


class AudioOutClear(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: the bot was interrupted; drop the bot audio not yet encoded."""

    session_id: str


class OutputOpen(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: attach the bot's output tracks (audio, video or both)."""

    session_id: str
    audio: bool
    audio_auto_silence: bool
    video: bool


class OutputCodecSet(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the peer's connection negotiated this video codec; encode bot video in it."""

    session_id: str
    video_mime_type: str


class VideoKeyframeRequest(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the peer lost its picture or a frame was dropped on the way; send a keyframe."""

    session_id: str


class VideoBitrateSet(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the peer's bandwidth estimate changed; encode bot video at this bitrate."""

    session_id: str
    bitrate: int


class AudioIn(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: one encoded frame of peer audio (usually 20 ms of Opus); it follows in one frame."""

    session_id: str
    mime_type: str
    pts: int


class VideoIn(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: one complete encoded frame of a peer video source; its bitstream follows in one frame.

    ``index`` counts the source's frames, so a gap (a dropped frame, or a
    stream that resumed mid-way) shows and the worker waits for a keyframe.
    """

    session_id: str
    source: str
    mime_type: str
    index: int
    pts: int


class AudioOut(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: 20 ms of bot audio as one Opus packet, which follows in one frame."""

    session_id: str
    seq: int


class AudioOutAck(msgspec.Struct, tag=True, frozen=True):
    """Engine to worker: the audio up to ``seq`` has been taken by the sender (or dropped)."""

    session_id: str
    seq: int


class VideoOut(msgspec.Struct, tag=True, frozen=True):
    """Worker to engine: a bot video frame in the negotiated codec; its bitstream follows in one frame.

    ``index`` counts the session's encoded frames, so a gap (a dropped frame)
    shows and the engine can wait for a keyframe instead of sending a broken picture.
    """

    session_id: str
    index: int
    keyframe: bool


Message = (
    WorkerRegister
    | WorkerAccept
    | WorkerHeartbeat
    | EngineHeartbeat
    | WorkerStop
    | SessionOpen
    | SessionClose
    | SessionConnect
    | PeerStateChange
    | TrackStatusChange
    | AppMessageIn
    | AppMessageOut
    | PeerRenegotiate
    | MediaCaptureSet
    | PeerKeyframeRequest
    | AudioOutClear
    | OutputOpen
    | OutputCodecSet
    | VideoKeyframeRequest
    | VideoBitrateSet
    | AudioIn
    | VideoIn
    | AudioOut
    | AudioOutAck
    | VideoOut
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """The header frame for a message."""
    return _encoder.encode(message)


def decode(header: bytes | memoryview) -> Message:
    """The message in a header frame.

    Raises:
        msgspec.ValidationError: If the frame is not a message of this protocol.
    """
    return _decoder.decode(header)
