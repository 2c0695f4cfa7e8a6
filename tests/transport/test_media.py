import av
import cv2
import numpy as np
import pytest

from transport.media import (
    FORMAT_CONVERSIONS,
    AudioFramer,
    MediaDecoder,
    OpusEncoder,
    VideoEncoder,
    is_keyframe,
    planes_to_rgb,
    rgb_to_i420,
)

BAR_COLOURS = [
    (255, 255, 255),
    (255, 255, 0),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 255),
    (255, 0, 0),
    (0, 0, 255),
    (0, 0, 0),
    (192, 192, 192),
    (128, 128, 128),
    (64, 64, 64),
    (32, 96, 160),
]

# Each conversion rounds to 8 bits (YUV quantization, the full-to-video range
# squeeze for yuvj420p) and swscale and OpenCV use slightly different BT.601
# coefficients; together that measures at most 2 levels. 4:2:0 chroma
# subsampling adds nothing because only bar interiors are compared: a 2x2
# chroma block never straddles two bars there.
TOLERANCE = 3
EDGE = 2  # pixels next to a bar boundary, where chroma blocks mix two bars


def colour_bars(bar_width: int, height: int) -> np.ndarray:
    row = np.repeat(np.array(BAR_COLOURS, np.uint8), bar_width, axis=0)
    return np.ascontiguousarray(np.broadcast_to(row, (height, *row.shape)))


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
    frame = source_frame(colour_bars(16, 32), fmt)

    rgb = convert(frame)

    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert_bars(rgb, 16, expected_colours(fmt))


@pytest.mark.parametrize("fmt", sorted(FORMAT_CONVERSIONS))
@pytest.mark.parametrize(("bars", "height"), [(12, 62), (11, 61)])
def test_planes_to_rgb_odd_sizes_and_padded_lines(fmt, bars, height):
    width = 9 * bars  # 108 or 99
    rgb = colour_bars(9, height)[:, :width]
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
    frame = source_frame(colour_bars(16, 32), "yuv444p")
    with pytest.raises(ValueError, match="yuv444p"):
        convert(frame)


@pytest.mark.parametrize("fmt", sorted(FORMAT_CONVERSIONS))
def test_planes_to_rgb_rejects_short_plane(fmt):
    frame = source_frame(colour_bars(16, 32), fmt)
    planes = plane_bytes(frame)
    planes[-1] = planes[-1][:-1]

    with pytest.raises(ValueError, match=fmt):
        planes_to_rgb(fmt, frame.width, frame.height, planes, line_sizes(frame))


def test_planes_to_rgb_rejects_missing_plane():
    frame = source_frame(colour_bars(16, 32), "yuv420p")
    planes = plane_bytes(frame)[:2]

    with pytest.raises(ValueError, match="yuv420p"):
        planes_to_rgb("yuv420p", frame.width, frame.height, planes, line_sizes(frame))


def test_planes_to_rgb_accepts_trimmed_last_row():
    frame = source_frame(colour_bars(9, 61), "yuv420p")
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
    rgb = colour_bars(9, height)[:, : 9 * bars]
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
    rgb = colour_bars(16, 32)
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


# --- audio ---------------------------------------------------------------

PIECES = [7, 333, 960, 1]  # input frame sizes in samples, cycled


def tone(frequency: float, rate: int, channels: int, seconds: float, amplitude=10000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = np.round(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return np.repeat(mono, channels).tobytes()


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


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    padded = 8 * len(samples)  # finer bins than 1 / duration
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), padded))
    return np.argmax(spectrum) * rate / padded


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
    assert abs(peak_frequency(samples[:, 0], out_rate) - 440) < 2


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


ENCODED_BARS = colour_bars(32, 240)


def _bars_i420():
    return rgb_to_i420(ENCODED_BARS, ENCODED_BARS.shape[1], ENCODED_BARS.shape[0])


@pytest.mark.parametrize(("mime_type", "decoder"), [("video/VP8", "libvpx"), ("video/H264", "h264")])
def test_video_encoder_output_decodes_to_the_picture(mime_type, decoder):
    encoder = VideoEncoder(mime_type)
    decoding = av.CodecContext.create(decoder, "r")
    frames, keyframes = [], []
    for index in range(5):
        data, keyframe = encoder.encode(_bars_i420(), index * 3000)
        keyframes.append(keyframe)
        frames += decoding.decode(av.Packet(data)) if data else []
    assert keyframes[0] and not any(keyframes[1:])
    rgb = frames[-1].to_ndarray(format="rgb24")
    assert np.abs(rgb.astype(int) - ENCODED_BARS).mean() < 6


def test_video_encoder_keyframe_on_request_and_on_bitrate_change():
    encoder = VideoEncoder("video/VP8")
    assert [encoder.encode(_bars_i420(), i * 3000, keyframe=i == 2)[1] for i in range(4)] == [True, False, True, False]
    encoder.bitrate = 10**9
    assert encoder.bitrate == 1_500_000  # aiortc's bounds for VP8
    assert encoder.encode(_bars_i420(), 5 * 3000)[1]  # reopened at the new rate


def test_video_encoder_rejects_a_codec_it_does_not_have():
    with pytest.raises(ValueError, match="no encoder"):
        VideoEncoder("video/AV1")


def test_opus_encoder_one_packet_per_20ms_that_decodes_to_the_tone():
    encoder = OpusEncoder()
    decoder = av.CodecContext.create("opus", "r")
    t = np.arange(48000) / 48000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    decoded = []
    for start in range(0, tone.size, 960):
        packet = encoder.encode(tone[start : start + 960].tobytes())
        assert packet
        decoded += [frame.to_ndarray()[0] for frame in decoder.decode(av.Packet(packet))]
    signal = np.concatenate(decoded)[4800:]
    spectrum = np.abs(np.fft.rfft(signal))
    assert abs(np.argmax(spectrum) * 48000 / signal.size - 440) < 5


def test_opus_encoder_rejects_a_partial_frame():
    with pytest.raises(ValueError, match="20 ms"):
        OpusEncoder().encode(bytes(100))


@pytest.mark.parametrize("mime_type", ["video/VP8", "video/H264"])
def test_media_decoder_decodes_what_the_encoder_made_and_keyframes_show(mime_type):
    encoder, decoder = VideoEncoder(mime_type), MediaDecoder()
    encoded = [encoder.encode(_bars_i420(), index * 3000, keyframe=index == 3) for index in range(5)]
    assert [is_keyframe(mime_type, data) for data, _ in encoded] == [keyframe for _, keyframe in encoded]
    assert [keyframe for _, keyframe in encoded] == [True, False, False, True, False]
    frames = [frame for index, (data, _) in enumerate(encoded) for frame in decoder.decode(mime_type, data, index * 3000)]
    rgb = planes_to_rgb(
        frames[-1].format.name, frames[-1].width, frames[-1].height, frames[-1].planes, [p.line_size for p in frames[-1].planes]
    )
    assert np.abs(rgb.astype(int) - ENCODED_BARS).mean() < 6
    assert frames[-1].pts == 4 * 3000


def test_media_decoder_decodes_opus_and_refuses_an_unknown_codec():
    decoder = MediaDecoder()
    frames = decoder.decode("audio/opus", OpusEncoder().encode(bytes(1920)), 960)
    assert (frames[0].sample_rate, frames[0].samples, frames[0].format.name) == (48000, 960, "s16")
    with pytest.raises(ValueError):
        decoder.decode("video/AV1", b"\x00", 0)


def test_keyframe_detection_of_unknown_or_empty_frames():
    assert not is_keyframe("video/VP8", b"")
    assert not is_keyframe("video/AV1", b"\x00")
