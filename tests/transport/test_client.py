"""Pipecat's client on this host: the peer's frames given to the bot as RGB images and exact audio frames, the bot's written back."""

import asyncio
import json

import av
import numpy as np
from pipecat.frames.frames import (
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.transports.base_transport import TransportParams

from engine.common.protocol import (
    AppMessageOut,
    AudioOut,
    AudioOutClear,
    MediaCaptureSet,
    MediaSource,
    OutputOpen,
    SessionClose,
    SessionConnect,
)
from tests.support.client import bars_match
from tests.support.link import sent
from tests.support.media import (
    BARS,
    PC_ID,
    encoded_audio,
    encoded_video,
    engine_side,
    tone,
)
from transport.client import SmallWebRTCCallbacks, SmallWebRTCClient

# What a pipeline gives its processors; the client reads only the sample rates.
SETUP = FrameProcessorSetup(clock=None, task_manager=None, pipeline_worker=None, audio_in_sample_rate=16000)


def client_on(connection) -> tuple[SmallWebRTCClient, list]:
    """A client on ``connection``, and the list its callbacks record into."""
    events = []

    async def on_app_message(message, sender):
        events.append(("app-message", message, sender))

    async def on_client_connected(connection):
        events.append(("connected", connection))

    async def on_client_disconnected(connection):
        events.append(("disconnected", connection))

    async def on_track_status(source, enabled):
        events.append(("track-status", source, enabled))

    callbacks = SmallWebRTCCallbacks(
        on_app_message=on_app_message,
        on_client_connected=on_client_connected,
        on_client_disconnected=on_client_disconnected,
        on_track_status=on_track_status,
    )
    return SmallWebRTCClient(connection, callbacks), events


async def connected(params: TransportParams):
    """A client set up with ``params`` whose peer has connected: the client, its connection, outbox and events."""
    connection, outbox = engine_side()
    client, events = client_on(connection)
    await client.setup(params, SETUP)
    await client.connect()
    await connection.handle_state("connected")
    await connection.cleanup()  # the event handlers have run
    return client, connection, outbox, events


def yuv420p(picture: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    frame.pts = pts
    return frame


async def test_the_peer_connecting_opens_the_output_and_tells_the_bot():
    params = TransportParams(audio_out_enabled=True, video_out_enabled=True, video_out_width=320, video_out_height=240)

    client, connection, outbox, events = await connected(params)

    assert [message for message, _ in sent(outbox)] == [SessionConnect(PC_ID), OutputOpen(PC_ID, True, True, True)]
    assert events == [("connected", connection)]
    assert client.is_connected and not client.is_closing


async def test_a_peer_connected_before_setup_waits_for_the_bot():
    connection, outbox = engine_side()
    client, events = client_on(connection)

    await connection.handle_state("connected")
    await connection.cleanup()

    assert events == [] and sent(outbox) == []


def test_a_decoded_picture_becomes_an_rgb_user_image():
    connection, _ = engine_side()
    client, _ = client_on(connection)

    image = client.to_image_frame(yuv420p(BARS, 3000), MediaSource.SCREEN_VIDEO)

    assert (image.format, image.size, image.user_id) == ("RGB", (320, 240), PC_ID)
    assert (image.transport_source, image.pts) == (MediaSource.SCREEN_VIDEO, 3000)
    assert bars_match(np.frombuffer(image.image, np.uint8).reshape(240, 320, 3))


def test_a_picture_in_a_format_it_cannot_convert_is_dropped():
    connection, _ = engine_side()
    client, _ = client_on(connection)

    frame = av.VideoFrame.from_ndarray(BARS, format="rgb24").reformat(format="yuv444p")

    assert client.to_image_frame(frame, MediaSource.CAMERA) is None


async def test_the_peers_camera_is_read_as_rgb_images():
    client, connection, _, _ = await connected(TransportParams(video_in_enabled=True))
    for message, payload in encoded_video(1, {1}):
        connection.deliver_media(message, payload)

    image = await asyncio.wait_for(anext(client.read_video_frame(MediaSource.CAMERA)), 2)

    assert image.size == (320, 240) and bars_match(np.frombuffer(image.image, np.uint8).reshape(240, 320, 3))
    connection.end("test over")


async def test_the_peers_audio_is_read_in_20ms_frames_at_the_pipelines_rate_while_captured():
    client, connection, outbox, _ = await connected(TransportParams(audio_in_enabled=True, audio_in_channels=2))
    sent(outbox)
    reader = client.read_audio_frame()
    first = asyncio.create_task(anext(reader))
    await asyncio.sleep(0)
    assert [message for message, _ in sent(outbox)] == [MediaCaptureSet(PC_ID, MediaSource.MICROPHONE, True)]

    for message, payload in encoded_audio(tone(440, 48000, 1, 0.1)):
        connection.deliver_media(message, payload)
    frames = [await asyncio.wait_for(first, 2)] + [await asyncio.wait_for(anext(reader), 2) for _ in range(3)]
    await reader.aclose()

    assert all((frame.sample_rate, frame.num_channels, len(frame.audio)) == (16000, 2, 320 * 2 * 2) for frame in frames)
    assert [message for message, _ in sent(outbox)] == [MediaCaptureSet(PC_ID, MediaSource.MICROPHONE, False)]


async def test_the_bots_media_is_written_only_to_an_open_output():
    connection, outbox = engine_side()
    client, _ = client_on(connection)
    audio = OutputAudioRawFrame(tone(440, 24000, 1, 0.04), 24000, 1)
    image = OutputImageRawFrame(BARS.tobytes(), (320, 240), "RGB")
    assert not await client.write_audio_frame(audio)  # not connected yet

    client, connection, outbox, _ = await connected(TransportParams(audio_out_enabled=True))

    assert await client.write_audio_frame(audio)
    assert not await client.write_video_frame(image)  # video output is not enabled
    assert [type(message) for message, _ in sent(outbox)][-1] is AudioOut
    client.clear_audio_out()
    assert [message for message, _ in sent(outbox)] == [AudioOutClear(PC_ID)]


async def test_app_messages_and_track_status_reach_the_callbacks():
    client, connection, outbox, events = await connected(TransportParams())

    await connection.handle_app_message(json.dumps({"hello": 1}))
    await connection.handle_track_status(1, False)
    await connection.cleanup()
    await client.send_message(OutputTransportMessageFrame(message={"to": "peer"}))

    assert events[1:] == [("app-message", {"hello": 1}, PC_ID), ("track-status", MediaSource.CAMERA, False)]
    assert not client.video_source_enabled(MediaSource.CAMERA)
    assert client.video_source_enabled(MediaSource.SCREEN_VIDEO)
    [(message, _)] = [(m, p) for m, p in sent(outbox) if isinstance(m, AppMessageOut)]
    assert json.loads(message.json) == {"to": "peer"}


async def test_a_peer_that_leaves_is_reported():
    _, connection, _, events = await connected(TransportParams())

    await connection.handle_closed()
    await connection.cleanup()

    assert events[-1] == ("disconnected", connection)


async def test_the_bot_disconnecting_ends_the_session_without_reporting_it():
    client, connection, outbox, events = await connected(TransportParams())

    await client.disconnect()
    await connection.handle_closed()
    await connection.cleanup()
    await client.send_message(OutputTransportMessageFrame(message="too late"))

    assert client.is_closing
    assert [message for message, _ in sent(outbox)][-1] == SessionClose(PC_ID, "bot disconnected")
    assert events == [("connected", connection)]
