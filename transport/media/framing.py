"""Audio framing: packed s16 PCM resampled to a target rate and channel count and cut into exact chunks.

The bot reads the peer's audio in 20 ms frames at the pipeline's rate; the
bot's audio goes to the Opus encoder in 20 ms frames at 48 kHz mono.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Buffer


class AudioFramer:
    """Resamples packed s16 PCM to a target rate and channel count and cuts it into exact chunks.

    The resampler is kept across pushes so its filter state carries over and
    consecutive chunks join without clicks. It delays its output slightly
    (about 1 ms at 16 kHz), and that tail is only released when the input
    format changes.
    """

    def __init__(self, sample_rate: int, num_channels: int, chunk_ms: int = 20):
        """Initialize the framer.

        Args:
            sample_rate: Output sample rate in Hz.
            num_channels: Output channel count.
            chunk_ms: Duration of each output chunk in milliseconds.

        Raises:
            ValueError: If a chunk would be empty.
        """
        if sample_rate <= 0 or num_channels <= 0 or chunk_ms <= 0:
            raise ValueError(
                f"invalid audio output: {sample_rate} Hz, {num_channels} channels, {chunk_ms} ms"
            )
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._chunk_bytes = sample_rate * chunk_ms // 1000 * num_channels * 2
        if self._chunk_bytes == 0:
            raise ValueError(f"{chunk_ms} ms at {sample_rate} Hz is less than one sample")
        self._pending = bytearray()
        self._source: tuple[int, int] | None = None
        self._resampler: av.AudioResampler | None = None

    @property
    def sample_rate(self) -> int:
        """Sample rate of the chunks returned by ``push``."""
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        """Channel count of the chunks returned by ``push``."""
        return self._num_channels

    @property
    def chunk_bytes(self) -> int:
        """Size of every chunk returned by ``push``."""
        return self._chunk_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered toward the next chunk."""
        return len(self._pending)

    def push(self, pcm: Buffer, sample_rate: int, num_channels: int) -> list[bytes]:
        """Add input audio and take every complete chunk now available.

        Args:
            pcm: Packed s16 PCM, any number of whole samples.
            sample_rate: Input sample rate in Hz.
            num_channels: Input channel count.

        Returns:
            Chunks of exactly ``chunk_bytes`` at the output format, possibly none.

        Raises:
            ValueError: If the input format is invalid or ``pcm`` ends mid-sample;
                nothing is buffered then.
        """
        data = memoryview(pcm).cast("B")
        if sample_rate <= 0 or num_channels <= 0:
            raise ValueError(f"invalid audio input: {sample_rate} Hz, {num_channels} channels")
        if len(data) % (2 * num_channels):
            # A partial sample would shift every later sample by a byte or channel.
            raise ValueError(
                f"{len(data)} bytes is not a whole number of {num_channels}-channel s16 samples"
            )

        chunks: list[bytes] = []
        if (sample_rate, num_channels) != self._source:
            if self._resampler is not None:
                for tail in self._resampler.resample(None):
                    chunks += self._cut(tail.to_ndarray())
            self._source = (sample_rate, num_channels)
            self._resampler = (
                None
                if self._source == (self._sample_rate, self._num_channels)
                else av.AudioResampler(
                    format="s16", layout=_layout(self._num_channels), rate=self._sample_rate
                )
            )
        if not data:
            return chunks
        if self._resampler is None:
            return chunks + self._cut(data)

        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(data, np.int16).reshape(1, -1), format="s16", layout=_layout(num_channels)
        )
        frame.sample_rate = sample_rate
        for resampled in self._resampler.resample(frame):
            chunks += self._cut(resampled.to_ndarray())
        return chunks

    def clear(self) -> None:
        """Drop buffered audio, including what the resampler holds."""
        self._pending.clear()
        self._source = None
        self._resampler = None

    def _cut(self, pcm: Buffer) -> list[bytes]:
        """Append output-format PCM and slice off whole chunks, copying each chunk once."""
        data = memoryview(pcm).cast("B")
        size = self._chunk_bytes
        chunks = []
        start = 0
        if self._pending:
            start = min(size - len(self._pending), len(data))
            self._pending += data[:start]
            if len(self._pending) < size:
                return chunks
            chunks.append(bytes(self._pending))
            self._pending.clear()
        end = start + (len(data) - start) // size * size
        chunks.extend(bytes(data[offset : offset + size]) for offset in range(start, end, size))
        self._pending += data[end:]
        return chunks


def _layout(num_channels: int) -> str:
    """FFmpeg's default channel layout for a channel count ("1c" is mono, "2c" stereo)."""
    return f"{num_channels}c"
