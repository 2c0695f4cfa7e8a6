"""The worker's codecs: video and Opus encoders whose output decodes, and the decoder the peer's frames go through."""

import av
import numpy as np
import pytest

from engine.common.keyframes import is_keyframe
from engine.common.protocol import VideoEncoderSettings
from tests.support.client import dominant_frequency
from tests.support.media import BARS, tone
from transport.media.codecs import MediaDecoder, OpusEncoder, VideoEncoder
from transport.media.colour import rgb_to_i420

BARS_I420 = rgb_to_i420(BARS, BARS.shape[1], BARS.shape[0])


@pytest.mark.parametrize(("mime_type", "decoder"), [("video/VP8", "libvpx"), ("video/H264", "h264")])
def test_video_encoder_output_decodes_to_the_picture(mime_type, decoder):
    encoder = VideoEncoder(mime_type)
    decoding = av.CodecContext.create(decoder, "r")
    frames, keyframes = [], []
    for index in range(5):
        data, keyframe = encoder.encode(BARS_I420, index * 3000)
        keyframes.append(keyframe)
        frames += decoding.decode(av.Packet(data)) if data else []
    assert keyframes[0] and not any(keyframes[1:])
    rgb = frames[-1].to_ndarray(format="rgb24")
    assert np.abs(rgb.astype(int) - BARS).mean() < 6


def test_video_encoder_keyframe_on_request_and_on_bitrate_change():
    encoder = VideoEncoder("video/VP8")
    assert [encoder.encode(BARS_I420, i * 3000, keyframe=i == 2)[1] for i in range(4)] == [True, False, True, False]
    encoder.bitrate = 10**9
    assert encoder.bitrate == 1_500_000  # aiortc's bounds for VP8
    assert encoder.encode(BARS_I420, 5 * 3000)[1]  # reopened at the new rate


def encoded(encoder: VideoEncoder, frames: int = 3) -> list[bytes]:
    return [encoder.encode(BARS_I420, index * 3000)[0] for index in range(frames)]


def test_video_encoder_takes_the_engines_vp8_speed_denoiser_and_bitrate_range():
    settings = VideoEncoderSettings(
        vp8_cpu_used=-16, vp8_noise_sensitivity=0, min_bitrate=300_000, max_bitrate=800_000, start_bitrate=400_000
    )
    encoder = VideoEncoder("video/VP8", settings)

    assert (encoder.options["cpu-used"], encoder.options["noise-sensitivity"]) == ("-16", "0")
    assert VideoEncoder("video/VP8").options["cpu-used"] == "-6"  # aiortc's
    # libvpx takes them: the same picture encodes otherwise, and still decodes.
    frames = encoded(encoder)
    assert frames != encoded(VideoEncoder("video/VP8"))
    decoder = MediaDecoder()
    [picture] = [frame for data in frames for frame in decoder.decode("video/VP8", data, 0)][-1:]
    assert np.abs(picture.to_ndarray(format="rgb24").astype(int) - BARS).mean() < 6
    assert encoder.bitrate == 400_000
    encoder.bitrate = 10**9
    assert encoder.bitrate == 800_000
    encoder.bitrate = 1
    assert encoder.bitrate == 300_000


def test_video_encoder_takes_the_h264_preset_and_a_maximum_below_the_codecs_own_minimum():
    encoder = VideoEncoder("video/H264", VideoEncoderSettings(h264_preset="ultrafast", max_bitrate=300_000))

    assert encoder.options["preset"] == "ultrafast" and "preset" not in VideoEncoder("video/H264").options
    assert encoded(encoder) != encoded(VideoEncoder("video/H264"))
    assert encoder.bitrate == 300_000  # aiortc's H264 minimum is 500 kbit/s: the maximum wins


def test_video_encoder_rejects_a_codec_it_does_not_have():
    with pytest.raises(ValueError, match="no encoder"):
        VideoEncoder("video/AV1")


def test_opus_encoder_one_packet_per_20ms_that_decodes_to_the_tone():
    encoder = OpusEncoder()
    decoder = av.CodecContext.create("opus", "r")
    pcm = tone(440, 48000, 1, 1.0)
    decoded = []
    for start in range(0, len(pcm), 1920):
        packet = encoder.encode(pcm[start : start + 1920])
        assert packet
        decoded += [frame.to_ndarray()[0] for frame in decoder.decode(av.Packet(packet))]
    assert abs(dominant_frequency(np.concatenate(decoded)[4800:], 48000) - 440) < 5


def test_opus_encoder_rejects_a_partial_frame_and_a_rate_libopus_does_not_take():
    with pytest.raises(ValueError, match="20 ms"):
        OpusEncoder().encode(bytes(100))
    with pytest.raises(ValueError, match="44100"):
        OpusEncoder(44100)


@pytest.mark.parametrize("mime_type", ["video/VP8", "video/H264"])
def test_media_decoder_decodes_what_the_encoder_made_and_keyframes_show(mime_type):
    encoder, decoder = VideoEncoder(mime_type), MediaDecoder()
    encoded = [encoder.encode(BARS_I420, index * 3000, keyframe=index == 3) for index in range(5)]
    assert [is_keyframe(mime_type, data) for data, _ in encoded] == [keyframe for _, keyframe in encoded]
    assert [keyframe for _, keyframe in encoded] == [True, False, False, True, False]
    frames = [frame for index, (data, _) in enumerate(encoded) for frame in decoder.decode(mime_type, data, index * 3000)]
    rgb = frames[-1].to_ndarray(format="rgb24")
    assert np.abs(rgb.astype(int) - BARS).mean() < 6
    assert frames[-1].pts == 4 * 3000


def test_media_decoder_decodes_opus_and_refuses_an_unknown_codec():
    decoder = MediaDecoder()
    frames = decoder.decode("audio/opus", OpusEncoder().encode(bytes(1920)), 960)
    assert (frames[0].sample_rate, frames[0].samples, frames[0].format.name) == (48000, 960, "s16")
    with pytest.raises(ValueError):
        decoder.decode("video/AV1", b"\x00", 0)
