"""What Chromium's fake devices play: a sine tone (WAV) for the microphone, colour bars (Y4M) for the camera."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from tests.support.client import colour_bars

#: The fake microphone's tone; the demo bot echoes it back.
TONE_HZ = 440.0
TONE_RATE = 48000

#: The fake camera: colour bars (``tests.support.client.BAR_COLOURS``) with a
#: small white square crossing the top eighth, this size, at this rate.
CAMERA_SIZE = (320, 240)
CAMERA_FPS = 30


def write_tone_wav(path: Path, frequency: float = TONE_HZ, seconds: float = 2.0, rate: int = TONE_RATE) -> Path:
    """A mono 16-bit WAV of a sine tone, half of full scale.

    A whole number of periods (440 Hz x 2 s), so Chromium's loop has no click.
    """
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def write_bars_y4m(path: Path, size=CAMERA_SIZE, fps: int = CAMERA_FPS, seconds: float = 2.0) -> Path:
    """A Y4M (I420) video of colour bars; the moving square makes every frame differ."""
    import av

    width, height = size
    frames = int(fps * seconds)
    bars = colour_bars(width, height)
    plane_sizes = [(width, height), (width // 2, height // 2), (width // 2, height // 2)]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for index in range(frames):
            rgb = bars.copy()
            x = index * (width - 16) // frames
            rgb[4:20, x : x + 16] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.write(b"FRAME\n")
            for plane, (w, h) in zip(frame.planes, plane_sizes):
                rows = np.frombuffer(plane, dtype=np.uint8).reshape(h, plane.line_size)
                out.write(rows[:, :w].tobytes())
    return path
