"""Colour conversion: the peer's decoded planes to packed RGB, and the bot's RGB(A) to I420."""

import av
import cv2
import numpy as np
import pytest

from tests.support.client import BAR_COLOURS as CLIENT_BAR_COLOURS
from tests.support.client import colour_bars
from transport.media.colour import FORMAT_CONVERSIONS, planes_to_rgb, rgb_to_i420

# The test client's eight bars, then greys and a colour that is neither.
BAR_COLOURS = [*CLIENT_BAR_COLOURS, (192, 192, 192), (128, 128, 128), (64, 64, 64), (32, 96, 160)]

# Each conversion rounds to 8 bits (YUV quantization, the full-to-video range
# squeeze for yuvj420p) and swscale and OpenCV use slightly different BT.601
# coefficients; together that measures at most 2 levels. 4:2:0 chroma
# subsampling adds nothing because only bar interiors are compared: a 2x2
# chroma block never straddles two bars there.
TOLERANCE = 3
EDGE = 2  # pixels next to a bar boundary, where chroma blocks mix two bars


def bar_picture(bar_width: int, height: int) -> np.ndarray:
    return colour_bars(bar_width * len(BAR_COLOURS), height, BAR_COLOURS)


def assert_bars(image: np.ndarray, bar_width: int, expected: list[tuple]) -> None:
    """Every bar's interior (image edges included) is within TOLERANCE of its colour."""
    assert image.shape == (image.shape[0], bar_width * len(expected), 3)
    for index, colour in enumerate(expected):
        start = index * bar_width + (EDGE if index else 0)
        end = (index + 1) * bar_width - (EDGE if index < len(expected) - 1 else 0)
        error = np.abs(image[:, start:end].astype(int) - np.array(colour)).max()
        assert error <= TOLERANCE, f"bar {index} {colour}: off by {error}"


def source_frame(rgb: np.ndarray, fmt: str) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format=fmt)


def plane_bytes(frame: av.VideoFrame) -> list[bytes]:
    return [bytes(p) for p in frame.planes]


def line_sizes(frame: av.VideoFrame) -> list[int]:
    return [p.line_size for p in frame.planes]


def convert(frame: av.VideoFrame) -> np.ndarray:
    return planes_to_rgb(
        frame.format.name, frame.width, frame.height, plane_bytes(frame), line_sizes(frame)
    )


def expected_colours(fmt: str) -> list[tuple]:
    if fmt != "gray":
        return BAR_COLOURS
    # swscale's gray is full-range BT.601 luma.
    return [(round(0.299 * r + 0.587 * g + 0.114 * b),) * 3 for r, g, b in BAR_COLOURS]


def test_format_conversions_keys():
    assert FORMAT_CONVERSIONS == {
        "gray": cv2.COLOR_GRAY2RGB,
        "nv12": cv2.COLOR_YUV2RGB_NV12,
        "yuv420p": cv2.COLOR_YUV2RGB_I420,
        "yuvj420p": cv2.COLOR_YUV2RGB_I420,
    }


@pytest.mark.parametrize("fmt", sorted(FORMAT_CONVERSIONS))
def test_planes_to_rgb_colour_bars(fmt):
    frame = source_frame(bar_picture(16, 32), fmt)

    rgb = convert(frame)

    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert_bars(rgb, 16, expected_colours(fmt))


@pytest.mark.parametrize("fmt", sorted(FORMAT_CONVERSIONS))
@pytest.mark.parametrize(("bars", "height"), [(12, 62), (11, 61)])
def test_planes_to_rgb_odd_sizes_and_padded_lines(fmt, bars, height):
    width = 9 * bars  # 108 or 99
    rgb = bar_picture(9, height)[:, :width]
    # swscale stretches the chroma of an odd-width image (99 columns onto 50)
    # instead of siting chroma column k on luma columns 2k and 2k+1 as decoders
    # do, so the frame is made at the even size, the way an encoder pads it,
    # and read back at the odd one.
    even = cv2.copyMakeBorder(rgb, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
    frame = source_frame(even, fmt)
    # PyAV aligns every line, so the planes carry padding the conversion must skip.
    assert frame.planes[0].line_size > width

    out = planes_to_rgb(fmt, width, height, plane_bytes(frame), line_sizes(frame))

    assert out.shape == (height, width, 3) and out.flags.c_contiguous
    assert_bars(out, 9, expected_colours(fmt)[:bars])


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
@pytest.mark.parametrize("size", [(64, 48), (100, 60)])
def test_planes_to_rgb_matches_opencv_exactly(fmt, size):
    width, height = size
    noise = np.random.default_rng(1).integers(0, 256, (height, width, 3), np.uint8)
    frame = source_frame(noise, fmt)
    contiguous = frame.to_ndarray()
    assert contiguous.shape == (height * 3 // 2, width)

    planes = [memoryview(p) for p in frame.planes]

    rgb = planes_to_rgb(fmt, width, height, planes, line_sizes(frame))

    np.testing.assert_array_equal(rgb, cv2.cvtColor(contiguous, FORMAT_CONVERSIONS[fmt]))


@pytest.mark.parametrize("size", [(64, 48), (99, 61)])
def test_planes_to_rgb_unpads_rgb24(size):
    width, height = size
    noise = np.random.default_rng(2).integers(0, 256, (height, width, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(noise, format="rgb24")

    rgb = convert(frame)

    np.testing.assert_array_equal(rgb, noise)
    assert rgb.flags.c_contiguous and rgb.flags.writeable


def test_planes_to_rgb_rejects_unsupported_format():
    frame = source_frame(bar_picture(16, 32), "yuv444p")
    with pytest.raises(ValueError, match="yuv444p"):
        convert(frame)


@pytest.mark.parametrize("fmt", sorted(FORMAT_CONVERSIONS))
def test_planes_to_rgb_rejects_short_plane(fmt):
    frame = source_frame(bar_picture(16, 32), fmt)
    planes = plane_bytes(frame)
    planes[-1] = planes[-1][:-1]

    with pytest.raises(ValueError, match=fmt):
        planes_to_rgb(fmt, frame.width, frame.height, planes, line_sizes(frame))


def test_planes_to_rgb_rejects_missing_plane():
    frame = source_frame(bar_picture(16, 32), "yuv420p")
    planes = plane_bytes(frame)[:2]

    with pytest.raises(ValueError, match="yuv420p"):
        planes_to_rgb("yuv420p", frame.width, frame.height, planes, line_sizes(frame))


def test_planes_to_rgb_accepts_trimmed_last_row():
    frame = source_frame(bar_picture(9, 61), "yuv420p")
    sizes = line_sizes(frame)
    visible = [frame.width, (frame.width + 1) // 2, (frame.width + 1) // 2]
    # Padding after the last row's pixels is never read.
    planes = [p[: len(p) - s + v] for p, s, v in zip(plane_bytes(frame), sizes, visible)]

    rgb = planes_to_rgb("yuv420p", frame.width, frame.height, planes, sizes)

    np.testing.assert_array_equal(rgb, convert(frame))


@pytest.mark.parametrize("fmt", ["RGB", "RGBA", None])
@pytest.mark.parametrize("bars", [12, 11])
@pytest.mark.parametrize("height", [32, 61])
def test_rgb_to_i420_round_trip(fmt, bars, height):
    rgb = bar_picture(9, height)[:, : 9 * bars]
    width = 9 * bars  # 108 or 99
    image = rgb if fmt != "RGBA" else np.dstack([rgb, np.full((height, width), 77, np.uint8)])
    even_width, even_height = width + width % 2, height + height % 2

    i420 = rgb_to_i420(image.tobytes(), width, height, fmt)

    assert i420.shape == (even_height * 3 // 2, even_width)
    assert i420.dtype == np.uint8 and i420.flags.c_contiguous
    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    assert (frame.width, frame.height) == (even_width, even_height)
    for back in (frame.to_ndarray(format="rgb24"), convert(frame)):
        assert_bars(back[:height, :width], 9, BAR_COLOURS[:bars])
        # An odd edge is repeated, so the extra row and column hold the edge colour.
        back = back.astype(int)
        assert np.abs(back[:, -1] - back[:, width - 1]).max() <= TOLERANCE
        assert np.abs(back[-1] - back[height - 1]).max() <= TOLERANCE


def test_rgb_to_i420_accepts_arrays_and_memoryviews():
    rgb = bar_picture(16, 32)
    width = rgb.shape[1]
    expected = rgb_to_i420(rgb.tobytes(), width, 32)

    for image in (rgb, np.asfortranarray(rgb), memoryview(rgb.tobytes())):
        np.testing.assert_array_equal(rgb_to_i420(image, width, 32), expected)


@pytest.mark.parametrize(
    ("size", "fmt", "width", "height"),
    [
        (64 * 48 * 3 - 1, "RGB", 64, 48),
        (64 * 48 * 3, "RGBA", 64, 48),
        (64 * 48 * 4, "RGB", 64, 48),
        (64 * 48 * 3, "BGR", 64, 48),
        (64 * 48 * 3, "rgb", 64, 48),
        (0, "RGB", 0, 48),
    ],
)
def test_rgb_to_i420_rejects_bad_input(size, fmt, width, height):
    with pytest.raises(ValueError):
        rgb_to_i420(bytes(size), width, height, fmt)


def test_rgb_to_i420_rejects_wrong_dtype():
    with pytest.raises(ValueError):
        rgb_to_i420(np.zeros((48, 64, 3), np.float32), 64, 48)
