"""Every message of the engine-worker link survives encoding; garbage is refused."""

import msgspec
import pytest

from engine import protocol

EXAMPLES = [
    protocol.WorkerRegister("w1", 42, "host", 4),
    protocol.WorkerAccept("e1"),
    protocol.WorkerHeartbeat(2, 0.5, 0.25, 3, True),
    protocol.EngineHeartbeat(),
    protocol.WorkerStop("bye"),
    protocol.SessionOpen("pc", "run", {"video_width": 320}),
    protocol.SessionClose("pc", "done"),
    protocol.SessionConnect("pc"),
    protocol.PeerStateChange("pc", "connected"),
    protocol.TrackStatusChange("pc", 1, False),
    protocol.AppMessageIn("pc", '{"a": 1}'),
    protocol.AppMessageOut("pc", '{"b": 2}'),
    protocol.PeerRenegotiate("pc"),
    protocol.MediaCaptureSet("pc", "camera", True),
    protocol.PeerKeyframeRequest("pc", "camera"),
    protocol.AudioOutClear("pc"),
    protocol.OutputOpen("pc", True, True, True),
    protocol.AudioIn("pc", "audio/opus", 960),
    protocol.VideoIn("pc", "camera", "video/VP8", 12, 3000),
    protocol.AudioOut("pc", 7),
    protocol.AudioOutAck("pc", 7),
    protocol.VideoOut("pc", 1, True),
    protocol.OutputCodecSet("pc", "video/VP8"),
    protocol.VideoKeyframeRequest("pc"),
    protocol.VideoBitrateSet("pc", 1_500_000),
]


def test_every_message_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(protocol.Message.__args__)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert protocol.decode(protocol.encode(message)) == message


def test_every_message_says_who_sends_it():
    for cls in protocol.Message.__args__:
        assert cls.__doc__ and ("engine" in cls.__doc__.lower() or "worker" in cls.__doc__.lower()), cls


@pytest.mark.parametrize("garbage", [b"", b"\xff\x00", msgspec.msgpack.encode({"type": "Nope"})])
def test_garbage_is_refused(garbage):
    with pytest.raises(msgspec.DecodeError):
        protocol.decode(garbage)


def test_invalid_state_is_refused():
    raw = msgspec.msgpack.encode({"type": "PeerStateChange", "session_id": "pc", "state": "exploded"})
    with pytest.raises(msgspec.ValidationError):
        protocol.decode(raw)
