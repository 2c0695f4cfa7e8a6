"""The keyframe gate: a stream starts at a keyframe, and after a gap waits for the next one, asking once."""

from engine.common.keyframes import KEYFRAME_RETRY_S, KeyframeGate, is_keyframe


def test_a_stream_starts_at_its_first_keyframe():
    requests = []
    gate = KeyframeGate(lambda: requests.append(1))
    assert not gate.admit(1, False)
    assert requests == [1]
    assert gate.admit(2, True) and gate.admit(3, False)
    assert gate.dropped_frames == 1


def test_a_gap_drops_up_to_the_next_keyframe_and_asks_once():
    requests = []
    gate = KeyframeGate(lambda: requests.append(1))
    assert gate.admit(1, True)
    requests.clear()
    assert not gate.admit(3, False)  # frame 2 was lost
    assert not gate.admit(4, False)  # continuous, but it depends on frame 2
    assert requests == [1] and gate.dropped_frames == 2
    assert gate.admit(5, True) and gate.admit(6, False)


def test_a_broken_stream_asks_again_after_the_retry_interval(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("engine.common.keyframes.time.monotonic", lambda: now[0])
    requests = []
    gate = KeyframeGate(lambda: requests.append(now[0]))
    gate.break_stream()
    gate.break_stream()
    now[0] += KEYFRAME_RETRY_S
    assert not gate.admit(1, False)
    assert requests == [100.0, 100.0 + KEYFRAME_RETRY_S]


def test_keyframe_detection_of_unknown_or_empty_frames():
    # Real keyframes of both codecs are told apart in tests/transport/media/test_codecs.py, from the encoders.
    assert not is_keyframe("video/VP8", b"")
    assert not is_keyframe("video/AV1", b"\x00")
