"""The bot's media on its way to the peer: encoded in the worker, numbered, and bounded on the way to the engine."""

import asyncio

import numpy as np

from engine.common.link import Outbox
from engine.common.protocol import (
    AUDIO_OUT_WINDOW_MS,
    AudioOutClear,
    VideoEncoderSettings,
    VideoOut,
)
from tests.support.client import bars_match, colour_bars, dominant_frequency
from tests.support.link import next_sent, sent, until
from tests.support.media import BARS, PC_ID, tone
from transport.bot_output import AudioOutput, VideoOutput
from transport.media.codecs import MediaDecoder


async def test_audio_before_the_output_opens_is_not_sent():
    outbox = Outbox("engine")
    output = AudioOutput(PC_ID, outbox)

    await output.write(tone(440, 48000, 1, 0.1), 48000, 1)

    assert sent(outbox) == []


async def written_10ms_at_a_time(output: AudioOutput, outbox: Outbox, pcm: bytes, rate: int, channels: int) -> list:
    """The (seq, packet) pairs the output sends for ``pcm``, written 10 ms at a time and acknowledged as they go."""
    packets = []
    step = rate // 100 * channels * 2
    for start in range(0, len(pcm), step):
        await output.write(pcm[start : start + step], rate, channels)
        for message, [data] in sent(outbox):
            packets.append((message.seq, data))
            output.acknowledge(message.seq)
    return packets


def assert_decoded_at_48khz_as_the_tone(packets: list) -> None:
    """The packets decode, as a peer decodes them, to 20 ms frames at 48 kHz of the 440 Hz tone."""
    decoder = MediaDecoder()
    frames = [frame for _, data in packets for frame in decoder.decode("audio/opus", data, 0)]
    assert all((frame.sample_rate, frame.samples) == (48000, 960) for frame in frames)
    left = np.concatenate([frame.to_ndarray()[0][:: len(frame.layout.channels)] for frame in frames])
    assert abs(dominant_frequency(left, 48000) - 440) < 5


async def test_audio_at_any_rate_becomes_numbered_20ms_opus_packets_the_peer_decodes_at_48khz():
    for rate, channels in ((24000, 2), (44100, 1)):
        outbox = Outbox("engine")
        output = AudioOutput(PC_ID, outbox)
        output.open()
        packets = await written_10ms_at_a_time(output, outbox, tone(440, rate, channels, 1.0), rate, channels)

        # A resampler (to mono; 44.1 kHz, which libopus does not take, to 48 kHz) holds back a little of the last 20 ms.
        assert [seq for seq, _ in packets] == list(range(1, len(packets) + 1)) and len(packets) in (49, 50)
        assert_decoded_at_48khz_as_the_tone(packets)


async def test_mono_audio_at_a_rate_libopus_takes_is_encoded_as_it_is():
    outbox = Outbox("engine")
    output = AudioOutput(PC_ID, outbox)
    output.open()
    packets = await written_10ms_at_a_time(output, outbox, tone(440, 16000, 1, 1.0), 16000, 1)

    # No resampler in the way: every 20 ms is a packet at once.
    assert [seq for seq, _ in packets] == list(range(1, 51))
    assert_decoded_at_48khz_as_the_tone(packets)


async def test_a_cleared_output_drops_the_partial_frame_and_asks_the_engine_to_drop_its_own():
    outbox = Outbox("engine")
    output = AudioOutput(PC_ID, outbox)
    output.open()

    await output.write(tone(440, 48000, 1, 0.01), 48000, 1)
    output.clear()
    await output.write(tone(440, 48000, 1, 0.01), 48000, 1)

    # Two 10 ms halves, but the first was dropped: no 20 ms packet yet.
    assert [message for message, _ in sent(outbox)] == [AudioOutClear(PC_ID)]


async def test_closing_releases_a_writer_waiting_for_acknowledgements():
    outbox = Outbox("engine")
    output = AudioOutput(PC_ID, outbox)
    output.open()
    # More than the window: the writer waits for acknowledgements that never come.
    writing = asyncio.create_task(output.write(tone(440, 48000, 1, AUDIO_OUT_WINDOW_MS / 1000 + 0.1), 48000, 1))
    await asyncio.sleep(0.05)
    assert not writing.done()

    output.close()

    await asyncio.wait_for(writing, 2)


async def test_video_waits_for_the_negotiated_codec():
    outbox = Outbox("engine")
    output = VideoOutput(PC_ID, outbox)
    output.write(BARS.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")
    await asyncio.sleep(0.05)
    assert sent(outbox) == []  # the engine has not said which codec the peer takes

    output.set_codec("video/H264")
    output.write(BARS.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")

    message, [data] = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (1, True)
    [frame] = MediaDecoder().decode("video/H264", data, 0)
    assert bars_match(frame.to_ndarray(format="rgb24"))
    output.close()


async def test_a_newer_image_replaces_one_not_yet_encoded():
    outbox = Outbox("engine")
    output = VideoOutput(PC_ID, outbox)
    output.set_codec("video/VP8")
    reversed_bars = np.ascontiguousarray(BARS[:, ::-1])

    output.write(BARS.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")
    output.write(reversed_bars.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")

    message, [data] = await next_sent(outbox, VideoOut)
    [frame] = MediaDecoder().decode("video/VP8", data, 0)
    assert message.index == 1 and bars_match(frame.to_ndarray(format="rgb24"), mirrored=True)
    output.close()


async def test_an_image_that_cannot_be_encoded_is_dropped_and_the_next_goes_out():
    outbox = Outbox("engine")
    output = VideoOutput(PC_ID, outbox)
    output.set_codec("video/VP8")
    rgba = colour_bars(64, 48)
    rgba = np.dstack([rgba, np.full(rgba.shape[:2], 255, np.uint8)])

    output.write(b"\x00" * 10, 64, 48, "RGB")  # not 64x48 pixels
    await asyncio.sleep(0.05)
    output.write(rgba.tobytes(), 64, 48, "RGBA")

    message, [data] = await next_sent(outbox, VideoOut)
    [frame] = MediaDecoder().decode("video/VP8", data, 0)
    assert message.index == 1 and (frame.width, frame.height) == (64, 48)
    output.close()


def write_bars(output: VideoOutput, image=None) -> None:
    output.write(BARS.tobytes() if image is None else image, BARS.shape[1], BARS.shape[0], "RGB")


async def first_picture_sent(refine_frames: int = 0, refresh_s: float = 0, image=None) -> tuple[VideoOutput, Outbox]:
    """A VP8 output that has sent its first picture (the bars, or ``image``), and the outbox it sent it to."""
    outbox = Outbox("engine")
    output = VideoOutput(PC_ID, outbox)
    output.set_codec("video/VP8", VideoEncoderSettings(static_refine_frames=refine_frames, static_refresh_s=refresh_s))
    write_bars(output, image)
    await next_sent(outbox, VideoOut)
    return output, outbox


async def test_an_unchanged_picture_is_encoded_while_it_sharpens_then_not_at_all():
    image = BARS.tobytes()
    output, outbox = await first_picture_sent(refine_frames=2, image=image)

    for _ in range(2):  # twice more while the encoder sharpens it
        write_bars(output, image)
        await next_sent(outbox, VideoOut)
    # The same object, the same bytes in another, and as an array: nothing encoded, nothing sent.
    for skipped, same in enumerate([image, bytes(bytearray(image)), BARS.copy()], start=1):
        write_bars(output, same)
        await until(lambda skipped=skipped: output.unchanged_skipped == skipped)
    assert sent(outbox) == []

    # A changed picture is encoded at once.
    write_bars(output, np.ascontiguousarray(BARS[:, ::-1]).tobytes())
    message, _ = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (4, False)
    output.close()


async def test_a_keyframe_request_while_the_picture_is_static_encodes_it_again_as_a_keyframe():
    output, outbox = await first_picture_sent()
    write_bars(output)
    await until(lambda: output.unchanged_skipped == 1)

    output.request_keyframe()  # and the bot writes nothing new

    message, [data] = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (2, True)
    [frame] = MediaDecoder().decode("video/VP8", data, 0)  # a fresh decoder: it decodes on its own
    assert bars_match(frame.to_ndarray(format="rgb24"))
    # The keyframe starts the sharpening again (none here), so the picture is skipped after it.
    write_bars(output)
    await until(lambda: output.unchanged_skipped == 2)
    assert sent(outbox) == []
    output.close()


async def test_a_new_negotiation_while_the_picture_is_static_sends_it_as_a_keyframe():
    output, outbox = await first_picture_sent()
    write_bars(output)
    await until(lambda: output.unchanged_skipped == 1)

    output.set_codec("video/VP8", VideoEncoderSettings(static_refine_frames=0, static_refresh_s=0))

    message, _ = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (2, True)
    output.close()


async def test_a_static_picture_is_encoded_again_once_a_refresh_is_due():
    refresh_s = 0.05
    output, outbox = await first_picture_sent(refresh_s=refresh_s)

    await asyncio.sleep(refresh_s * 2)
    write_bars(output)

    message, _ = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (2, False)
    output.close()


async def test_a_buffer_the_bot_changes_in_place_is_a_new_picture():
    buffer = bytearray(BARS.tobytes())
    output, outbox = await first_picture_sent(image=buffer)

    buffer[:] = np.ascontiguousarray(BARS[:, ::-1]).tobytes()
    write_bars(output, buffer)

    message, _ = await next_sent(outbox, VideoOut)
    assert message.index == 2 and output.unchanged_skipped == 0
    output.close()


async def test_another_codec_takes_effect_on_the_next_picture_even_an_unchanged_one():
    output, outbox = await first_picture_sent()

    # A renegotiation: another codec for the same picture, which must start with a keyframe in it.
    output.set_codec("video/H264", VideoEncoderSettings(static_refine_frames=0, static_refresh_s=0))
    write_bars(output)

    message, [data] = await next_sent(outbox, VideoOut)
    assert (message.index, message.keyframe) == (2, True)
    [frame] = MediaDecoder().decode("video/H264", data, 0)
    assert bars_match(frame.to_ndarray(format="rgb24"))
    output.close()
