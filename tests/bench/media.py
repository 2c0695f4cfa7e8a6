"""Pre-encoded media for the load generator: made once with PyAV, replayed without encoding.

``load_clip()`` returns a :class:`Clip`: a loop of VP8 packets (a moving
picture with the frame index drawn into it, see :func:`draw_index` and
:func:`read_index`), the same frames encoded all-intra (sent instead of the
next frame when the server asks for a keyframe with a PLI/FIR), and Opus
packets of a continuous tone. Encoding is deterministic (fixed content, fixed
encoder settings, single thread) and the result is cached under
``tests/bench/.cache/``.

:func:`packet_tracks` makes tracks that replay such packets at wall-clock pace: its ``recv()``
returns ``av.Packet`` objects with ``pts``/``time_base`` set, which aiortc's
sender only packetizes (``Encoder.pack``), so sending costs the client no
encoding.

The frame index is drawn as black/white cells in a band at the top of the
picture, left half and its mirror image on the right half, so it reads the
same whether the echo mirrors the picture (this host's demo bot) or not (the
reference server).
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms

# The index band: cells of CELL_W x CELL_H pixels from x=CELL_X0, on the left
# half, mirrored on the right half. Cell 0 is always white, cell 1 always
# black (they tell a real index from a picture without one), cells 2.. hold
# INDEX_BITS bits, most significant first.
CELL_W = 24
CELL_H = 32
CELL_X0 = 8
INDEX_BITS = 10
CELLS = 2 + INDEX_BITS
FORMAT_VERSION = 2


def draw_index(luma: np.ndarray, index: int) -> None:
    """Draw ``index`` (0..1023) into the top band of a luma plane (in place), mirror-symmetric."""
    height, width = luma.shape
    if CELL_X0 + CELLS * CELL_W > width // 2:
        raise ValueError(f"a {width} pixel wide picture is too narrow for the index band")
    band = luma[:CELL_H]
    band[:] = 128
    bits = [1, 0] + [(index >> (INDEX_BITS - 1 - i)) & 1 for i in range(INDEX_BITS)]
    for i, bit in enumerate(bits):
        x = CELL_X0 + i * CELL_W
        band[:, x : x + CELL_W] = 235 if bit else 16
    band[:, width - width // 2 :] = band[:, : width // 2][:, ::-1]


def read_index(luma: np.ndarray) -> int | None:
    """The index drawn by :func:`draw_index`, read from the left half; None if there is none.

    ``luma`` is a (height, >=width) uint8 array (extra columns, e.g. row padding, are ignored
    as long as the width-th column is not needed: only the left half is read).
    """
    y0, y1 = CELL_H // 4, CELL_H - CELL_H // 4
    values = []
    for i in range(CELLS):
        x = CELL_X0 + i * CELL_W
        values.append(float(luma[y0:y1, x + CELL_W // 4 : x + CELL_W - CELL_W // 4].mean()))
    if values[0] < 170 or values[1] > 80:
        return None
    index = 0
    for v in values[2:]:
        if 80 < v < 170:
            return None  # a cell that is neither black nor white: no trustworthy index
        index = (index << 1) | (v >= 128)
    return index


def _picture(i: int, width: int, height: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Frame ``i`` as I420 planes: moving smooth gradients, a moving square, the index band."""
    t = i / 30.0
    y = 128 + 60 * np.sin(xx / 37.0 + t * 2.1) * np.cos(yy / 29.0 - t * 1.3) + 30 * np.sin((xx + yy) / 53.0 + t)
    y = np.clip(y, 16, 235).astype(np.uint8)
    # A bright square that travels across the picture.
    size = height // 5
    cx = int((width - size) * (0.5 + 0.45 * np.sin(t * 0.9)))
    cy = int((height - size) * (0.5 + 0.45 * np.cos(t * 1.3)))
    y[cy : cy + size, cx : cx + size] = 220
    draw_index(y, i)
    cyy, cxx = yy[::2, ::2], xx[::2, ::2]
    u = np.clip(128 + 40 * np.sin(cxx / 41.0 - t * 0.7), 16, 240).astype(np.uint8)
    v = np.clip(128 + 40 * np.cos(cyy / 33.0 + t * 0.5), 16, 240).astype(np.uint8)
    return y, u, v


def _encode_video(width: int, height: int, frames: int, bitrate: int, intra: bool) -> list[bytes]:
    """VP8 packets of the clip, one per frame (realtime settings close to a browser's)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.framerate = fractions.Fraction(30, 1)
    codec.bit_rate = bitrate * (3 if intra else 1)
    codec.gop_size = 1 if intra else frames  # one keyframe per loop, the rest on request
    codec.thread_count = 1
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "error-resilient": "1",
        "minrate": str(codec.bit_rate),
        "maxrate": str(codec.bit_rate),
        "bufsize": str(codec.bit_rate),
    }
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    packets: list[bytes] = []
    for i in range(frames):
        yp, up, vp = _picture(i, width, height, yy, xx)
        frame = av.VideoFrame.from_ndarray(np.concatenate([yp.ravel(), up.ravel(), vp.ravel()]).reshape(-1, width), format="yuv420p")
        frame.pts = i
        frame.time_base = codec.time_base
        if intra:
            frame.pict_type = av.video.frame.PictureType.I
        out = codec.encode(frame)
        if len(out) != 1:
            raise RuntimeError(f"libvpx gave {len(out)} packets for frame {i} (expected 1)")
        packets.append(bytes(out[0]))
    if codec.encode(None):
        raise RuntimeError("libvpx held frames back (lag-in-frames must be 0)")
    return packets


def _encode_audio(seconds: float, tone_hz: float, bitrate: int) -> list[bytes]:
    """Opus packets (20 ms, mono 48 kHz) of a continuous tone, a whole number of cycles long."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = AUDIO_TIME_BASE
    codec.options = {"application": "voip", "frame_duration": "20"}
    total = int(seconds * AUDIO_RATE)
    n = np.arange(total)
    tone = (0.3 * 32767 * np.sin(2 * np.pi * tone_hz * n / AUDIO_RATE)).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, total, AUDIO_FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(tone[None, start : start + AUDIO_FRAME_SAMPLES], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = AUDIO_TIME_BASE
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets[: total // AUDIO_FRAME_SAMPLES]


@dataclass
class Clip:
    """A loop of pre-encoded media: ``video[i]`` is frame i (30 fps), ``audio[k]`` is 20 ms."""

    width: int
    height: int
    video: list[bytes]
    video_intra: list[bytes]
    audio: list[bytes]
    params: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Length of the video loop."""
        return len(self.video) / 30.0

    @property
    def video_kbps(self) -> float:
        """Average bitrate of the video loop."""
        return sum(map(len, self.video)) * 8 / self.seconds / 1000


def load_clip(
    width: int = 640,
    height: int = 480,
    seconds: float = 10.0,
    video_bitrate: int = 800_000,
    tone_hz: float = 440.0,
    audio_bitrate: int = 32_000,
) -> Clip:
    """The clip for these parameters, from the cache or encoded now (a few seconds, once)."""
    frames = int(round(seconds * 30))
    if frames > 1 << INDEX_BITS:
        raise ValueError(f"at most {1 << INDEX_BITS} frames fit the index band")
    # Whole cycles of the tone in the loop, so the loop point does not click.
    tone_hz = round(tone_hz * seconds) / seconds
    params = dict(
        v=FORMAT_VERSION, width=width, height=height, frames=frames, video_bitrate=video_bitrate,
        tone_hz=tone_hz, audio_bitrate=audio_bitrate, av=av.__version__,
    )
    key = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:16]
    path = CACHE_DIR / f"clip-{width}x{height}-{frames}-{key}.pickle"
    if path.is_file():
        with path.open("rb") as f:
            return Clip(**pickle.load(f))
    clip = Clip(
        width=width,
        height=height,
        video=_encode_video(width, height, frames, video_bitrate, intra=False),
        video_intra=_encode_video(width, height, frames, video_bitrate, intra=True),
        audio=_encode_audio(frames / 30.0, tone_hz, audio_bitrate),
        params=params,
    )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(dict(clip.__dict__), f)  # plain data: loadable whatever module made it
    tmp.replace(path)
    return clip


def _make_track_class():
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class _PacketTrack(MediaStreamTrack):
        """Replays pre-encoded packets in a loop, each at its wall-clock time.

        Video: ``sender`` (set after ``addTransceiver``) is looked at for a pending
        keyframe request; when there is one, the all-intra version of the frame is
        sent instead. ``sent_at[i]`` is when frame i of the loop was last handed to
        aiortc (``time.monotonic()``).
        """

        def __init__(self, kind: str, packets: list[bytes], intra: list[bytes] | None, step: int, time_base):
            super().__init__()
            self.kind = kind
            self._packets = [av.Packet(p) for p in packets]
            self._intra = [av.Packet(p) for p in intra] if intra else None
            self._step = step  # pts units per packet
            self._time_base = time_base
            self._rate = 1 / float(time_base)
            self._n = 0
            self._start: float | None = None
            self.sender = None
            self.sent_at = [0.0] * len(packets)
            self.keyframes_sent = 0

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self._start is None:
                self._start = now
            else:
                wait = self._start + self._n * self._step / self._rate - now
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -1.0:
                    # Far behind (the client was starved): skip ahead instead of bursting.
                    self._start = now - self._n * self._step / self._rate
            i = self._n % len(self._packets)
            packet = self._packets[i]
            sender = self.sender
            if self._intra is not None and sender is not None and getattr(sender, "_RTCRtpSender__force_keyframe", False):
                sender._RTCRtpSender__force_keyframe = False
                packet = self._intra[i]
                self.keyframes_sent += 1
            packet.pts = self._n * self._step
            packet.time_base = self._time_base
            self.sent_at[i] = time.monotonic()
            self._n += 1
            return packet

    return _PacketTrack


_PacketTrackClass = None


def packet_tracks(clip: Clip):
    """A fresh (audio, video) pair of replay tracks for one peer connection."""
    global _PacketTrackClass
    if _PacketTrackClass is None:
        _PacketTrackClass = _make_track_class()
    audio = _PacketTrackClass("audio", clip.audio, None, AUDIO_FRAME_SAMPLES, AUDIO_TIME_BASE)
    video = _PacketTrackClass("video", clip.video, clip.video_intra, 3000, VIDEO_TIME_BASE)
    return audio, video


if __name__ == "__main__":
    started = time.perf_counter()
    c = load_clip()
    print(
        f"{len(c.video)} video packets ({c.video_kbps:.0f} kbit/s), {len(c.audio)} audio packets,"
        f" {time.perf_counter() - started:.1f} s"
    )
