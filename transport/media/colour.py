"""Colour conversion between the peer's decoded pictures and the bot's RGB images, with OpenCV.

Decoded video arrives as PyAV planes (padded rows, 4:2:0 or gray);
``planes_to_rgb`` gives the bot packed RGB. The bot's RGB(A) images go the
other way through ``rgb_to_i420``, ready for the video encoder.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Buffer


@functools.cache
def opencv() -> ModuleType:
    """OpenCV (``cv2``), imported on first use, with one thread.

    Only sessions with video convert pictures, and importing OpenCV costs a
    worker about 15 MB (tests/bench/worker_memory.py): a voice bot's worker
    never does.
    """
    import cv2

    # One conversion at a time per worker: the workers are the parallelism, and
    # OpenCV's own thread pool only spins against them (measured: a third of a
    # worker's CPU at two sessions).
    cv2.setNumThreads(1)
    return cv2


class _OpenCVCodes(Mapping[str, int]):
    """Names to OpenCV constants, read from OpenCV (importing it) only when a value is."""

    def __init__(self, constants: dict[str, str]):
        self._constants = constants

    def __getitem__(self, name: str) -> int:
        return getattr(opencv(), self._constants[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._constants)

    def __len__(self) -> int:
        return len(self._constants)


FORMAT_CONVERSIONS: Mapping[str, int] = _OpenCVCodes(
    {
        "gray": "COLOR_GRAY2RGB",
        "nv12": "COLOR_YUV2RGB_NV12",
        "yuv420p": "COLOR_YUV2RGB_I420",
        # OpenCV has no full-range variant; planes_to_rgb squeezes the planes into
        # video range first so the same conversion gives the right colours.
        "yuvj420p": "COLOR_YUV2RGB_I420",
    }
)

# OpenCV's 4:2:0 conversions assume video range (luma 16-235, chroma 16-240).
_FULL_TO_VIDEO_LUMA = np.round(16 + np.arange(256) * 219 / 255).astype(np.uint8)
_FULL_TO_VIDEO_CHROMA = np.round(128 + (np.arange(256) - 128) * 224 / 255).astype(np.uint8)

_RGB_TO_I420 = _OpenCVCodes({"RGB": "COLOR_RGB2YUV_I420", "RGBA": "COLOR_RGBA2YUV_I420"})
_CHANNELS = {"RGB": 3, "RGBA": 4}


def _plane(
    fmt: str,
    planes: Sequence[Buffer],
    line_sizes: Sequence[int],
    index: int,
    rows: int,
    row_bytes: int,
) -> np.ndarray:
    """The visible part of one padded plane as a (rows, row_bytes) view, without copying."""
    if index >= len(planes) or index >= len(line_sizes):
        raise ValueError(f"{fmt}: plane {index} is missing ({len(planes)} planes given)")
    data = np.frombuffer(planes[index], np.uint8)
    line_size = line_sizes[index]
    # The last row's padding is not needed, so a trimmed buffer is accepted.
    needed = line_size * (rows - 1) + row_bytes
    if line_size < row_bytes or data.size < needed:
        raise ValueError(
            f"{fmt}: plane {index} is too short: {data.size} bytes at line size {line_size}, "
            f"need {rows} rows of {row_bytes} bytes"
        )
    return np.lib.stride_tricks.as_strided(
        data, shape=(rows, row_bytes), strides=(line_size, 1), writeable=False
    )


def _copy(dst: np.ndarray, src: np.ndarray, lut: np.ndarray | None) -> None:
    """Copy src into dst, mapped through lut if one is given."""
    if lut is None:
        dst[...] = src
    else:
        opencv().LUT(src, lut, dst=dst)


def planes_to_rgb(
    fmt: str,
    width: int,
    height: int,
    planes: Sequence[Buffer],
    line_sizes: Sequence[int],
) -> np.ndarray:
    """Convert a frame's raw planes to packed RGB.

    Args:
        fmt: PyAV pixel format name: one of ``FORMAT_CONVERSIONS`` or ``"rgb24"``.
        width: Frame width in pixels.
        height: Frame height in pixels.
        planes: One buffer per plane, laid out as PyAV's ``frame.planes``: rows
            of ``line_sizes[i]`` bytes, of which only the first ones are pixels.
            4:2:0 chroma planes have ``ceil(height / 2)`` rows.
        line_sizes: Bytes per row of each plane, padding included.

    Returns:
        A new (height, width, 3) uint8 array.

    Raises:
        ValueError: If the format is unsupported, a size is not positive, or a
            plane is missing or too short.
    """
    if fmt != "rgb24" and fmt not in FORMAT_CONVERSIONS:
        raise ValueError(f"unsupported pixel format {fmt!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt}: invalid frame size {width}x{height}")
    if fmt == "rgb24":
        packed = _plane(fmt, planes, line_sizes, 0, height, width * 3)
        return packed.reshape(height, width, 3).copy()
    cv2 = opencv()
    if fmt == "gray":
        return cv2.cvtColor(_plane(fmt, planes, line_sizes, 0, height, width), cv2.COLOR_GRAY2RGB)

    # OpenCV's 4:2:0 conversions need even sizes. An odd size gets an extra
    # luma row/column that is left unset: each output pixel depends only on its
    # own luma, and the extra ones are cropped off the result.
    even_width, even_height = width + width % 2, height + height % 2
    chroma_rows = even_height // 2
    luma_lut, chroma_lut = (
        (_FULL_TO_VIDEO_LUMA, _FULL_TO_VIDEO_CHROMA) if fmt == "yuvj420p" else (None, None)
    )
    yuv = np.empty((even_height * 3 // 2, even_width), np.uint8)
    luma = yuv[:even_height]
    _copy(luma[:height, :width], _plane(fmt, planes, line_sizes, 0, height, width), luma_lut)
    chroma = yuv[even_height:].reshape(-1)
    if fmt == "nv12":
        _copy(
            chroma.reshape(chroma_rows, even_width),
            _plane(fmt, planes, line_sizes, 1, chroma_rows, even_width),
            chroma_lut,
        )
    else:
        half = chroma.size // 2
        for index, part in ((1, chroma[:half]), (2, chroma[half:])):
            _copy(
                part.reshape(chroma_rows, even_width // 2),
                _plane(fmt, planes, line_sizes, index, chroma_rows, even_width // 2),
                chroma_lut,
            )
    rgb = cv2.cvtColor(yuv, FORMAT_CONVERSIONS[fmt])
    if (even_width, even_height) != (width, height):
        rgb = np.ascontiguousarray(rgb[:height, :width])
    return rgb


def rgb_to_i420(
    image: Buffer | np.ndarray, width: int, height: int, fmt: str | None = "RGB"
) -> np.ndarray:
    """Convert a packed RGB or RGBA image to I420 (yuv420p, video range).

    yuv420p frames must have even sizes, so an odd width or height is rounded
    up by repeating the last column or row.

    Args:
        image: Packed pixels, ``width * height`` of them.
        width: Image width in pixels.
        height: Image height in pixels.
        fmt: ``"RGB"`` or ``"RGBA"`` as in Pipecat's ``OutputImageRawFrame.format``;
            None means RGB.

    Returns:
        One contiguous (even_height * 3 // 2, even_width) uint8 array, ready for
        ``av.VideoFrame.from_ndarray(arr, format="yuv420p")``.

    Raises:
        ValueError: If the format is unsupported, a size is not positive, or the
            image does not hold exactly ``width * height`` pixels.
    """
    fmt = fmt or "RGB"
    if fmt not in _RGB_TO_I420:
        raise ValueError(f"unsupported image format {fmt!r} (expected RGB or RGBA)")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt}: invalid image size {width}x{height}")
    channels = _CHANNELS[fmt]
    pixels = image if isinstance(image, np.ndarray) else np.frombuffer(image, np.uint8)
    expected = width * height * channels
    if pixels.dtype != np.uint8 or pixels.size != expected:
        raise ValueError(
            f"{fmt}: a {width}x{height} image needs {expected} uint8 values, "
            f"got {pixels.size} of {pixels.dtype}"
        )
    pixels = pixels.reshape(height, width, channels)
    cv2 = opencv()
    if width % 2 or height % 2:
        pixels = cv2.copyMakeBorder(pixels, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(pixels, _RGB_TO_I420[fmt])
