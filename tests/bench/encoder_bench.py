"""The bot video encoder's choices, measured: CPU per frame, bitrate and quality of each, and a static picture's cost.

Part 1 encodes a moving 640x480 picture at 30 fps (the load generator's clip,
``media.load_clip()``, decoded; and the same with camera-like grain added)
with the worker's own ``VideoEncoder`` under each setting in ``CONFIGS``, at
one target bitrate (then aiortc's VP8 and the cheapest H264 at rates
across their bounds), and prints per setting: encode CPU per frame (the
encoding thread's CPU time, so other processes on the machine do not count),
the bitrate it made, and PSNR against the source (luma, mean over the frames,
decoded with the worker's ``MediaDecoder``), with ratios to aiortc's defaults
(the first row). The settings take turns, a second of frames each, so
a busy moment on the machine falls on all of them alike.

Part 2 runs the worker's ``VideoOutput`` as Pipecat drives it for an avatar:
the same RGB image written at 30 fps, in real time. It prints the process's
CPU per second while the picture sharpens (the first
``static_refine_frames``) and after, with the skip and without it (today's
behaviour: every frame encoded), and what was sent.

Part 3 prints what telling a repeated picture from a new one costs.

Run: ``python -m tests.bench.encoder_bench`` (about 2 minutes; ``--quick`` for a shorter run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import timeit

import cv2
import numpy as np

from engine.common.link import Outbox
from engine.common.protocol import VideoEncoderSettings
from tests.bench.media import load_clip
from tests.support.link import queued_frames
from transport.bot_output import VideoOutput
from transport.media.codecs import VIDEO_TIME_BASE, MediaDecoder, VideoEncoder
from transport.media.colour import rgb_to_i420

WIDTH, HEIGHT, FPS = 640, 480, 30
BITRATE = 1_000_000  # within both codecs' bounds; the peer's estimate moves it in a session
DEFAULT = VideoEncoderSettings()
# aiortc's own encoder settings (what Pipecat's transport sends): the host's, but with libvpx's denoiser on.
AIORTC = VideoEncoderSettings(vp8_noise_sensitivity=4)
# (label, codec, settings): aiortc's settings first, the ratios' reference.
CONFIGS = [
    ("VP8 cpu-used -6, denoise 4 (aiortc's)", "video/VP8", AIORTC),
    ("VP8 cpu-used -8", "video/VP8", VideoEncoderSettings(vp8_cpu_used=-8, vp8_noise_sensitivity=4)),
    ("VP8 cpu-used -10", "video/VP8", VideoEncoderSettings(vp8_cpu_used=-10, vp8_noise_sensitivity=4)),
    ("VP8 cpu-used -12", "video/VP8", VideoEncoderSettings(vp8_cpu_used=-12, vp8_noise_sensitivity=4)),
    ("VP8 cpu-used -16", "video/VP8", VideoEncoderSettings(vp8_cpu_used=-16, vp8_noise_sensitivity=4)),
    ("VP8 cpu-used -6, denoise 0 (default)", "video/VP8", DEFAULT),
    ("VP8 cpu-used -12, denoise 0", "video/VP8", VideoEncoderSettings(vp8_cpu_used=-12)),
    ("H264 libx264 medium (aiortc's)", "video/H264", AIORTC),
    ("H264 libx264 veryfast", "video/H264", VideoEncoderSettings(h264_preset="veryfast")),
    ("H264 libx264 ultrafast", "video/H264", VideoEncoderSettings(h264_preset="ultrafast")),
]
# The bitrate range's effect, within aiortc's bounds of each codec: its VP8, and the cheapest H264.
BITRATES = [
    (f"{codec} {label} at {rate // 1000} kbit/s", f"video/{codec}", VideoEncoderSettings(start_bitrate=rate, **options))
    for codec, label, options, rates in (
        ("VP8", "aiortc's", {"vp8_noise_sensitivity": 4}, (250_000, 500_000, 1_000_000, 1_500_000)),
        ("H264", "ultrafast", {"h264_preset": "ultrafast"}, (500_000, 1_000_000, 1_500_000, 3_000_000)),
    )
    for rate in rates
]
GRAIN_SIGMA = 4.0


def moving_frames(count: int) -> list[np.ndarray]:
    """The clip's pictures as I420 arrays ((height * 3 // 2, width) uint8), ``count`` of them (looped)."""
    clip = load_clip(WIDTH, HEIGHT)
    decoder = MediaDecoder()
    frames = [
        frame.to_ndarray(format="yuv420p") for data in clip.video for frame in decoder.decode("video/VP8", data, 0)
    ]
    return [frames[i % len(frames)] for i in range(count)]


def with_grain(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The frames with fresh camera-like noise on the luma (fixed seed), which the denoiser is for."""
    rng = np.random.default_rng(12)
    grainy = []
    for frame in frames:
        noisy = frame.astype(np.int16)
        noisy[:HEIGHT] += rng.normal(0, GRAIN_SIGMA, (HEIGHT, WIDTH)).astype(np.int16)
        grainy.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return grainy


def psnr(decoded: np.ndarray, source: np.ndarray) -> float:
    """Luma PSNR in dB (capped at 99 for identical planes)."""
    error = np.mean((decoded[:HEIGHT].astype(np.float64) - source[:HEIGHT]) ** 2)
    return 99.0 if error == 0 else 10 * np.log10(255**2 / error)


class EncoderRun:
    """One setting's encoder and decoder over the frames, and what it has cost and made so far."""

    def __init__(self, mime_type: str, settings: VideoEncoderSettings):
        self.mime_type = mime_type
        self.encoder = VideoEncoder(mime_type, settings)
        if not settings.start_bitrate:
            self.encoder.bitrate = BITRATE
        self.decoder = MediaDecoder()
        self.cpu = 0.0
        self.frames = 0
        self.size = 0
        self.scores: list[float] = []

    def encode(self, index: int, source: np.ndarray, original: np.ndarray) -> None:
        """Encode frame ``index``; its CPU, its size, and its decoded luma's PSNR against ``original``."""
        started = time.thread_time()
        data, _ = self.encoder.encode(source, int(index / FPS / VIDEO_TIME_BASE))
        self.cpu += time.thread_time() - started
        self.frames += 1
        self.size += len(data)
        for frame in self.decoder.decode(self.mime_type, data, 0) if data else ():
            self.scores.append(psnr(frame.to_ndarray(format="yuv420p"), original))

    def result(self) -> dict:
        return {
            "cpu_ms": self.cpu / self.frames * 1000,
            "kbps": self.size * 8 / (self.frames / FPS) / 1000,
            "psnr": float(np.mean(self.scores)),
        }


def print_encoders(configs: list, frames: list[np.ndarray], originals: list[np.ndarray], title: str) -> None:
    """Encode the frames under every setting, a second at a time in turn, so the machine's moods fall on all alike."""
    print(f"\n{title}: {len(frames)} frames {WIDTH}x{HEIGHT}@{FPS}")
    runs = [EncoderRun(mime_type, settings) for _, mime_type, settings in configs]
    for start in range(0, len(frames), FPS):
        for run in runs:
            for index in range(start, min(start + FPS, len(frames))):
                run.encode(index, frames[index], originals[index])
    print(f"| {'setting':<38} | CPU ms/frame | x default | kbit/s | PSNR dB | dB vs default |")
    print(f"|{'-' * 40}|-------------:|----------:|-------:|--------:|--------------:|")
    reference = runs[0].result()
    for (label, _, _), run in zip(configs, runs, strict=True):
        result = run.result()
        print(
            f"| {label:<38} | {result['cpu_ms']:12.2f} | {result['cpu_ms'] / reference['cpu_ms']:9.2f} "
            f"| {result['kbps']:6.0f} | {result['psnr']:7.2f} | {result['psnr'] - reference['psnr']:+13.2f} |"
        )


def avatar() -> np.ndarray:
    """A static bot picture (RGB): a gradient backdrop, a face, a caption, a little texture."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[..., 0] = xx * 255 // WIDTH
    rgb[..., 1] = yy * 255 // HEIGHT
    rgb[..., 2] = 128
    cv2.circle(rgb, (320, 230), 150, (230, 190, 160), -1)
    cv2.circle(rgb, (270, 190), 20, (40, 40, 40), -1)
    cv2.circle(rgb, (370, 190), 20, (40, 40, 40), -1)
    cv2.ellipse(rgb, (320, 290), (60, 30), 0, 0, 180, (120, 30, 30), 8)
    cv2.putText(rgb, "Assistant", (200, 445), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    texture = np.random.default_rng(3).integers(-10, 11, rgb.shape)
    return np.clip(rgb.astype(np.int16) + texture, 0, 255).astype(np.uint8)


async def static_picture(settings: VideoEncoderSettings | None, phases: list[tuple[str, float]]) -> list[dict]:
    """Write one image at 30 fps through ``VideoOutput`` in real time; the process's CPU and what was sent, per phase.

    With no settings the image goes nowhere: the cost of this loop alone.
    """
    outbox = Outbox("engine")
    output = VideoOutput("bench", outbox)
    if settings is not None:
        output.set_codec("video/VP8", settings)
    image = avatar().tobytes()  # one bytes object, repeated: as Pipecat repeats an OutputImageRawFrame
    results = []
    tick = time.monotonic()
    for name, seconds in phases:
        frames = sent = size = 0
        cpu = time.process_time()
        for _ in range(int(seconds * FPS)):
            if settings is not None:
                output.write(image, WIDTH, HEIGHT, "RGB")
            frames += 1
            tick += 1 / FPS
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            for _header, payload in queued_frames(outbox):
                sent += 1
                size += len(payload)
        cpu = time.process_time() - cpu
        results.append(
            {
                "phase": name,
                "cpu_core": cpu / seconds,
                "written": frames,
                "encoded": sent,
                "kbps": size * 8 / seconds / 1000,
            }
        )
    output.close()
    return results


def print_static(refine_s: float, steady_s: float) -> None:
    phases = [("sharpening", refine_s), ("steady", steady_s)]
    print(f"\nStatic picture: {WIDTH}x{HEIGHT} RGB written at {FPS} fps through VideoOutput (VP8, aiortc's settings)")
    print("| mode | phase | seconds | CPU (cores) | frames written | frames encoded | kbit/s |")
    print("|------|-------|--------:|------------:|---------------:|---------------:|-------:|")
    loop_alone = asyncio.run(static_picture(None, phases))
    every_frame = asyncio.run(static_picture(VideoEncoderSettings(static_refine_frames=10**9), phases))
    skipping = asyncio.run(static_picture(DEFAULT, phases))
    modes = (
        ("the writing loop alone", loop_alone),
        ("every frame encoded (before)", every_frame),
        ("unchanged skipped (default)", skipping),
    )
    for mode, results in modes:
        for (_, seconds), result in zip(phases, results, strict=True):
            print(
                f"| {mode} | {result['phase']} | {seconds:.0f} | {result['cpu_core']:.4f} | {result['written']} "
                f"| {result['encoded']} | {result['kbps']:.0f} |"
            )
    for base, before, after in zip(loop_alone, every_frame, skipping, strict=True):
        spent_before, spent_after = before["cpu_core"] - base["cpu_core"], after["cpu_core"] - base["cpu_core"]
        print(
            f"{before['phase']}: CPU skipped / every frame = {after['cpu_core'] / before['cpu_core']:.3f}, "
            f"the loop's own taken out: {spent_after:.4f} / {spent_before:.4f} = {spent_after / spent_before:.3f}"
        )


def print_comparison_costs() -> None:
    image = avatar().tobytes()
    copy = bytes(bytearray(image))
    array = np.frombuffer(copy, np.uint8).reshape(HEIGHT, WIDTH, 3).copy()
    print(f"\nTelling a repeated {WIDTH}x{HEIGHT} RGB picture ({len(image) // 1024} KiB) from a new one, per frame:")
    for label, check in (
        ("same object (identity)", lambda: image is image),  # noqa: PLR0124 - the check VideoOutput makes first
        ("equal bytes objects (bytes ==)", lambda: image == copy),
        ("an array: tobytes() then ==", lambda: array.tobytes() == image),
        ("rgb_to_i420 (what a skip also saves)", lambda: rgb_to_i420(image, WIDTH, HEIGHT, "RGB")),
    ):
        runs = 200
        print(f"  {label:<40} {timeit.timeit(check, number=runs) / runs * 1000:.4f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames of the moving picture per setting")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the static picture after it sharpened")
    parser.add_argument("--quick", action="store_true", help="90 frames, 3 s steady")
    args = parser.parse_args()
    frames, steady = (90, 3.0) if args.quick else (args.frames, args.steady)
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(
        f"{platform.python_version()} on {cpu}, {os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}, "
        f"load average {os.getloadavg()[0]:.2f}, nice {os.nice(0)}"
    )
    moving = moving_frames(frames)
    at_target = f"at {BITRATE // 1000} kbit/s"
    print_encoders(CONFIGS, moving, moving, f"Moving picture (the load generator's clip) {at_target}, PSNR against it")
    title = f"The same with grain (luma noise sigma {GRAIN_SIGMA}), PSNR against the picture without it"
    print_encoders(CONFIGS, with_grain(moving), moving, f"{title}, {at_target}")
    print_encoders(BITRATES, moving, moving, "Moving picture at other bitrates (the encoder's bounds hold each)")
    refine_s = DEFAULT.static_refine_frames / FPS + 0.5
    print_static(refine_s, steady)
    print_comparison_costs()


if __name__ == "__main__":
    main()
