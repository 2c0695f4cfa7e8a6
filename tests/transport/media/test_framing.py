"""Audio framing: PCM resampled to a target rate and channel count and cut into exact chunks."""

import numpy as np
import pytest

from tests.support.client import dominant_frequency
from tests.support.media import tone
from transport.media.framing import AudioFramer

PIECES = [7, 333, 960, 1]  # input frame sizes in samples, cycled


def pieces(pcm: bytes, channels: int):
    """pcm cut into frames of PIECES samples, round and round."""
    frame_bytes = 2 * channels
    offset = 0
    index = 0
    while offset < len(pcm):
        size = PIECES[index % len(PIECES)] * frame_bytes
        yield pcm[offset : offset + size]
        offset += size
        index += 1


def push_all(framer: AudioFramer, pcm: bytes, rate: int, channels: int) -> list[bytes]:
    chunks = []
    for piece in pieces(pcm, channels):
        chunks += framer.push(piece, rate, channels)
    return chunks


def test_chunk_bytes():
    assert AudioFramer(16000, 1).chunk_bytes == 640
    assert AudioFramer(48000, 2).chunk_bytes == 3840
    assert AudioFramer(44100, 2, chunk_ms=10).chunk_bytes == 441 * 4


def test_rejects_empty_chunks():
    with pytest.raises(ValueError):
        AudioFramer(16000, 1, chunk_ms=0)
    with pytest.raises(ValueError):
        AudioFramer(10, 1)


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (16000, 1), (44100, 2)])
def test_rechunk_is_byte_identical(rate, channels):
    pcm = np.random.default_rng(3).integers(-32768, 32768, rate * channels // 3, np.int16).tobytes()
    framer = AudioFramer(rate, channels)

    chunks = push_all(framer, pcm, rate, channels)

    assert all(len(c) == framer.chunk_bytes for c in chunks)
    assert len(chunks) == len(pcm) // framer.chunk_bytes
    assert framer.pending_bytes == len(pcm) % framer.chunk_bytes
    assert b"".join(chunks) == pcm[: len(chunks) * framer.chunk_bytes]
    padding = bytes(framer.chunk_bytes - framer.pending_bytes)
    tail = pcm[len(chunks) * framer.chunk_bytes :]
    assert framer.push(padding, rate, channels) == [tail + padding]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((48000, 2), (16000, 1)),
        ((24000, 1), (48000, 2)),
        ((44100, 2), (16000, 1)),
        ((16000, 1), (24000, 1)),
    ],
)
def test_resample_keeps_duration_and_pitch(source, target):
    (in_rate, in_channels), (out_rate, out_channels) = source, target
    seconds = 1.0
    framer = AudioFramer(out_rate, out_channels)

    chunks = push_all(framer, tone(440, in_rate, in_channels, seconds), in_rate, in_channels)

    assert chunks and all(len(c) == framer.chunk_bytes for c in chunks)
    produced = len(chunks) * framer.chunk_bytes + framer.pending_bytes
    expected = seconds * out_rate * out_channels * 2
    assert abs(produced - expected) < framer.chunk_bytes
    samples = np.frombuffer(b"".join(chunks), np.int16).reshape(-1, out_channels)
    for channel in range(1, out_channels):
        np.testing.assert_array_equal(samples[:, channel], samples[:, 0])
    assert abs(dominant_frequency(samples[:, 0], out_rate) - 440) < 2


def test_resampled_chunks_join_without_clicks():
    framer = AudioFramer(16000, 1)
    amplitude = 10000

    chunks = push_all(framer, tone(440, 48000, 2, 1.0, amplitude), 48000, 2)

    samples = np.frombuffer(b"".join(chunks), np.int16).astype(int)
    # A sine's largest step between samples is amplitude * 2 * pi * f / rate
    # (~0.17 * amplitude); a resampler restarted mid-stream jumps further.
    assert np.abs(np.diff(samples)).max() < amplitude * 2 * np.pi * 440 / 16000 * 1.1
    assert np.abs(samples).max() > amplitude * 0.95


def test_input_format_change_keeps_buffered_audio():
    framer = AudioFramer(16000, 1)

    chunks = framer.push(tone(440, 48000, 2, 0.03), 48000, 2)
    chunks += framer.push(tone(440, 16000, 1, 0.03), 16000, 1)

    # Switching formats flushes the old resampler, so nothing from before the switch is lost.
    assert all(len(c) == 640 for c in chunks)
    assert len(chunks) * 640 + framer.pending_bytes == 2 * 480 * 2

    chunks += framer.push(tone(440, 24000, 1, 0.03), 24000, 1)

    assert all(len(c) == 640 for c in chunks)
    produced = len(chunks) * 640 + framer.pending_bytes
    # The new resampler holds back its filter delay (16 samples here) until flushed.
    assert 3 * 480 * 2 - 64 <= produced < 3 * 480 * 2


def test_clear_drops_pending_audio():
    framer = AudioFramer(16000, 1)
    framer.push(b"\x01\x00" * 100, 16000, 1)
    assert framer.pending_bytes == 200

    framer.clear()

    assert framer.pending_bytes == 0
    chunk = bytes(range(256)) * 2 + bytes(128)
    assert framer.push(chunk, 16000, 1) == [chunk]


def test_clear_drops_resampler_audio():
    framer = AudioFramer(16000, 1)
    framer.push(tone(440, 48000, 2, 0.05), 48000, 2)

    framer.clear()

    assert framer.pending_bytes == 0
    chunks = framer.push(bytes(960 * 4 * 5), 48000, 2)
    assert chunks and b"".join(chunks) == bytes(len(chunks) * 640)


@pytest.mark.parametrize(
    ("pcm", "rate", "channels"),
    [(bytes(3), 16000, 1), (bytes(6), 48000, 2), (bytes(4), 0, 1), (bytes(4), 16000, 0)],
)
def test_bad_push_changes_nothing(pcm, rate, channels):
    framer = AudioFramer(16000, 1)
    framer.push(b"\x05\x00" * 10, 16000, 1)

    with pytest.raises(ValueError):
        framer.push(pcm, rate, channels)

    assert framer.pending_bytes == 20
    assert framer.push(b"\x06\x00" * 310, 16000, 1) == [b"\x05\x00" * 10 + b"\x06\x00" * 310]


def test_empty_push_returns_nothing():
    framer = AudioFramer(16000, 1)
    assert framer.push(b"", 48000, 2) == []
    assert framer.push(b"", 16000, 1) == []
    assert framer.pending_bytes == 0
