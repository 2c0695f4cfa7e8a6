"""The bot's handle on its peer: Pipecat's connection events and methods, as messages to and from the engine."""

import asyncio
import json

from engine.common.protocol import (
    AUDIO_OUT_WINDOW_MS,
    OPUS_FRAME_MS,
    AppMessageOut,
    AudioOut,
    AudioOutClear,
    MediaCaptureSet,
    MediaSource,
    OutputOpen,
    PeerRenegotiate,
    SessionClose,
    SessionConnect,
    VideoEncoderSettings,
    VideoInKeyframeRequest,
    VideoOut,
)
from tests.support.client import bars_match
from tests.support.link import next_sent, sent
from tests.support.media import (
    BARS,
    PC_ID,
    encoded_audio,
    encoded_video,
    engine_side,
    tone,
)
from transport.media.codecs import MediaDecoder


async def test_connected_once_the_bot_connects_and_the_peer_is():
    connection, outbox = engine_side()
    await connection.handle_state("connected")
    assert not connection.is_connected()  # the bot has not connected yet

    await connection.connect()

    assert sent(outbox) == [(SessionConnect(PC_ID), [])]
    assert connection.is_connected()
    await connection.handle_state("disconnected")
    assert not connection.is_connected()


async def test_peer_states_fire_pipecats_event_handlers():
    connection, _ = engine_side()
    seen = []
    for state in ("new", "connecting", "connected", "disconnected", "failed", "closed"):
        connection.event_handler(state)(lambda conn, state=state: seen.append((conn, state)))

    for state in ("connecting", "connected", "disconnected"):
        await connection.handle_state(state)
    await connection.handle_closed()
    await connection.handle_closed()  # "closed" fires once
    await connection.cleanup()  # the handlers have run

    assert seen == [(connection, "connecting"), (connection, "connected"), (connection, "disconnected"), (connection, "closed")]


async def test_app_messages_cross_as_json():
    connection, outbox = engine_side()
    received = []
    connection.event_handler("app-message")(lambda conn, message: received.append(message))

    connection.send_app_message({"type": "hello", "n": 1})
    await connection.handle_app_message(json.dumps(["from", "peer"]))
    await connection.handle_app_message("not json")
    await connection.cleanup()

    [(message, _)] = sent(outbox)
    assert isinstance(message, AppMessageOut) and json.loads(message.json) == {"type": "hello", "n": 1}
    assert received == [["from", "peer"]]


async def test_control_requests_go_to_the_engine():
    connection, outbox = engine_side()

    connection.capture(MediaSource.CAMERA, True)
    connection.ask_to_renegotiate()
    connection.open_output(audio=False, audio_auto_silence=True, video=True)

    assert [message for message, _ in sent(outbox)] == [
        MediaCaptureSet(PC_ID, MediaSource.CAMERA, True),
        PeerRenegotiate(PC_ID),
        OutputOpen(PC_ID, False, True, True),
    ]


async def test_track_status_reaches_the_track_and_the_handlers():
    connection, _ = engine_side()
    statuses = []
    connection.event_handler("track-status")(lambda conn, index, enabled: statuses.append((index, enabled)))

    await connection.handle_track_status(2, False)
    await connection.cleanup()

    assert not connection.screen_video_input_track().is_enabled()
    assert connection.video_input_track().is_enabled()
    assert statuses == [(2, False)]


async def test_peer_media_goes_to_the_track_of_its_source():
    connection, outbox = engine_side()
    for message, payload in encoded_audio(tone(440, 48000, 1, 0.02)):
        connection.deliver_media(message, payload)
    [(first, payload)] = encoded_video(1, {1}, source=MediaSource.SCREEN_VIDEO)
    connection.deliver_media(first, payload)
    [(delta, payload)] = encoded_video(2, {1})[1:]
    connection.deliver_media(delta, payload)

    assert (await connection.audio_input_track().recv()).samples == 960
    assert (await asyncio.wait_for(connection.screen_video_input_track().recv(), 2)).width == BARS.shape[1]
    # The camera's first frame is not a keyframe: the engine is asked for one.
    message, _ = await next_sent(outbox, VideoInKeyframeRequest)
    assert message.source == MediaSource.CAMERA
    assert connection.frames_dropped == 1
    connection.end("test over")


async def test_bot_audio_is_sent_as_opus_and_the_writer_waits_past_the_window():
    connection, outbox = engine_side()
    connection.open_output(audio=True, audio_auto_silence=True, video=False)
    window = AUDIO_OUT_WINDOW_MS // OPUS_FRAME_MS

    writing = asyncio.create_task(connection.write_audio(tone(440, 48000, 1, 0.2), 48000, 1))
    await asyncio.sleep(0.05)

    assert not writing.done()  # 200 ms in flight: it waits for the engine's sender
    packets = [(message, payload) for message, payload in sent(outbox) if isinstance(message, AudioOut)]
    assert [message.seq for message, _ in packets] == list(range(1, 11))
    decoder = MediaDecoder()
    assert all(frame.samples == 960 for _, [data] in packets for frame in decoder.decode("audio/opus", data, 0))
    connection.handle_audio_ack(10 - window - 1)
    await asyncio.sleep(0.05)
    assert not writing.done()  # still one packet more than the window in flight
    connection.handle_audio_ack(10 - window)
    await asyncio.wait_for(writing, 2)


async def test_ending_the_session_releases_a_waiting_writer_and_tells_the_engine_once():
    connection, outbox = engine_side()
    connection.open_output(audio=True, audio_auto_silence=True, video=False)
    writing = asyncio.create_task(connection.write_audio(tone(440, 48000, 1, 0.2), 48000, 1))
    await asyncio.sleep(0.05)

    connection.end("bot ended")
    connection.end("bot ended")

    await asyncio.wait_for(writing, 2)
    assert [message for message, _ in sent(outbox) if isinstance(message, SessionClose)] == [SessionClose(PC_ID, "bot ended")]


async def test_a_session_the_engine_closed_is_not_closed_again():
    connection, outbox = engine_side()
    await connection.handle_closed()

    connection.end("bot ended")

    assert sent(outbox) == []


async def test_an_interruption_clears_the_bot_audio():
    connection, outbox = engine_side()
    connection.open_output(audio=True, audio_auto_silence=True, video=False)

    connection.clear_audio_out()

    assert [message for message, _ in sent(outbox)][-1] == AudioOutClear(PC_ID)


async def test_bot_video_is_encoded_in_the_negotiated_codec():
    connection, outbox = engine_side()
    connection.handle_video_codec("video/VP8", VideoEncoderSettings())
    connection.handle_bitrate(500_000)

    connection.write_video(BARS.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")
    message, [data] = await next_sent(outbox, VideoOut)
    connection.handle_keyframe_request()
    connection.write_video(BARS.tobytes(), BARS.shape[1], BARS.shape[0], "RGB")
    again, _ = await next_sent(outbox, VideoOut)

    assert (message.index, message.keyframe, again.index, again.keyframe) == (1, True, 2, True)
    [frame] = MediaDecoder().decode("video/VP8", data, 0)
    assert bars_match(frame.to_ndarray(format="rgb24"))
    connection.end("test over")
