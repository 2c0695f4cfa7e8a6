"""Every message of the engine-worker link survives encoding in its direction; garbage and wrong-way messages are refused."""

import typing

import msgspec
import pytest

from engine.common import protocol

EXAMPLES = [
    protocol.WorkerRegister("w1", 42, "host", 4),
    protocol.WorkerAccept("e1"),
    protocol.WorkerHeartbeat(0.5, 0.25, 3, True, ("pc-1", "pc-2"), 210.5),
    protocol.EngineHeartbeat(),
    protocol.WorkerStop("bye"),
    protocol.WorkerDrain("memory"),
    protocol.SessionOpen("pc", "run", {"video_width": 320}),
    protocol.SessionClose("pc", "done"),
    protocol.SessionConnect("pc"),
    protocol.PeerStateChange("pc", "connected"),
    protocol.TrackStatusChange("pc", 1, False),
    protocol.AppMessageIn("pc", '{"a": 1}'),
    protocol.AppMessageOut("pc", '{"b": 2}'),
    protocol.PeerRenegotiate("pc"),
    protocol.MediaCaptureSet("pc", protocol.MediaSource.CAMERA, True),
    protocol.VideoInKeyframeRequest("pc", protocol.MediaSource.CAMERA),
    protocol.AudioOutClear("pc"),
    protocol.OutputOpen("pc", True, True, True),
    protocol.AudioIn("pc", "audio/opus", 960),
    protocol.VideoIn("pc", protocol.MediaSource.SCREEN_VIDEO, "video/VP8", 12, 3000),
    protocol.VideoInBacklog("pc", protocol.MediaSource.CAMERA, "video/VP8", 3, (9000, 12000)),
    protocol.AudioOut("pc", 7),
    protocol.AudioOutAck("pc", 7),
    protocol.VideoOut("pc", 1, True),
    protocol.VideoOutCodecSet("pc", "video/VP8"),
    protocol.VideoOutCodecSet("pc", "video/H264", protocol.VideoEncoderSettings(h264_preset="veryfast", max_bitrate=800_000)),
    protocol.VideoOutKeyframeRequest("pc"),
    protocol.VideoOutBitrateSet("pc", 1_500_000),
]
FROM_WORKER = set(typing.get_args(protocol.FromWorker))
FROM_ENGINE = set(typing.get_args(protocol.FromEngine))


def test_every_message_has_an_example():
    assert {type(m) for m in EXAMPLES} == FROM_WORKER | FROM_ENGINE


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_in_its_direction_and_refused_the_other_way(message):
    header = protocol.encode(message)
    for union, decode in ((FROM_WORKER, protocol.decode_from_worker), (FROM_ENGINE, protocol.decode_from_engine)):
        if type(message) in union:
            assert decode(header) == message
        else:
            with pytest.raises(msgspec.ValidationError):
                decode(header)


def test_every_message_says_who_sends_it():
    for cls in FROM_WORKER | FROM_ENGINE:
        sender = (cls.__doc__ or "").split(":")[0].lower()
        expected = {
            (True, False): "worker to engine",
            (False, True): "engine to worker",
            (True, True): "either way",
        }[cls in FROM_WORKER, cls in FROM_ENGINE]
        assert expected in sender, cls


def test_messages_about_a_session_carry_its_id():
    for message in EXAMPLES:
        about_a_session = "session_id" in message.__struct_fields__
        assert isinstance(message, protocol.SessionMessage) == about_a_session, type(message)


@pytest.mark.parametrize("garbage", [b"", b"\xff\x00", msgspec.msgpack.encode({"type": "Nope"})])
def test_garbage_is_refused(garbage):
    for decode in (protocol.decode_from_worker, protocol.decode_from_engine):
        with pytest.raises(msgspec.DecodeError):
            decode(garbage)


def test_invalid_values_are_refused():
    for raw in (
        {"type": "PeerStateChange", "session_id": "pc", "state": "exploded"},
        {"type": "VideoIn", "session_id": "pc", "source": "nose", "mime_type": "video/VP8", "index": 1, "pts": 0},
    ):
        with pytest.raises(msgspec.ValidationError):
            protocol.decode_from_engine(msgspec.msgpack.encode(raw))


def test_sources_their_kinds_and_receivers():
    assert [protocol.SOURCE_BY_RECEIVER[i] for i in range(3)] == ["microphone", "camera", "screenVideo"]
    assert protocol.RECEIVER_BY_SOURCE["camera"] == protocol.VIDEO_TRANSCEIVER_INDEX
    assert protocol.MediaSource.MICROPHONE.kind is protocol.MediaKind.AUDIO
    assert protocol.MediaSource.SCREEN_VIDEO.kind is protocol.MediaKind.VIDEO


def test_the_bitrate_rule():
    assert protocol.bitrate_changed(0, 300_000)
    assert not protocol.bitrate_changed(1_000_000, 1_090_000)
    assert protocol.bitrate_changed(1_000_000, 1_110_000)
    assert protocol.bitrate_changed(1_000_000, 890_000)
