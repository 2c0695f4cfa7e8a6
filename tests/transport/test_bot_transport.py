"""The transport a bot builds: Pipecat's events and captures, in a running pipeline on a connection whose engine side the test plays."""

import asyncio
import json

import pytest
from pipecat.frames.frames import (
    ClientConnectedFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
)
from pipecat.transports.base_transport import TransportParams, VideoInSourceParams
from pipecat.transports.smallwebrtc import connection as pipecat_connection
from pipecat.transports.smallwebrtc import transport as pipecat_transport

from engine.common.protocol import AudioOut, MediaCaptureSet, MediaSource
from tests.support.link import DUE_S, next_sent
from tests.support.media import PC_ID, Recorder, engine_side, running, tone
from transport.bot_transport import SmallWebRTCTransport


def events_of(bot_transport: SmallWebRTCTransport, *names: str) -> asyncio.Queue:
    """A queue of ``(event, args)`` for each of the transport's events named."""
    events = asyncio.Queue()
    for name in names:
        bot_transport.event_handler(name)(lambda transport, *args, name=name: events.put_nowait((name, args)))
    return events


async def test_a_connecting_peer_is_captured_as_configured_before_the_bot_hears_of_it():
    connection, outbox = engine_side()
    params = TransportParams(video_in_enabled=True, video_in_sources={"screenVideo": VideoInSourceParams(framerate=5)})
    bot_transport = SmallWebRTCTransport(connection, params)
    events = events_of(bot_transport, "on_client_connected")
    recorder = Recorder(ClientConnectedFrame)

    async with running([bot_transport.input(), recorder, bot_transport.output()]):
        await connection.handle_state("connected")
        capture, _ = await next_sent(outbox, MediaCaptureSet)
        event = await asyncio.wait_for(events.get(), DUE_S)
        await recorder.next()

    assert capture == MediaCaptureSet(PC_ID, MediaSource.SCREEN_VIDEO, True)
    assert event == ("on_client_connected", (connection,))


async def test_app_messages_reach_the_bots_handlers_and_pipeline():
    connection, _ = engine_side()
    bot_transport = SmallWebRTCTransport(connection, TransportParams())
    events = events_of(bot_transport, "on_app_message", "on_client_message")
    recorder = Recorder(InputTransportMessageFrame)

    async with running([bot_transport.input(), recorder, bot_transport.output()]):
        await connection.handle_state("connected")
        await connection.handle_app_message(json.dumps({"hi": 1}))
        frame = await recorder.next()
        received = sorted([await asyncio.wait_for(events.get(), DUE_S) for _ in range(2)])

    assert frame.message == {"hi": 1}
    assert received == [("on_app_message", ({"hi": 1}, PC_ID)), ("on_client_message", ({"hi": 1}, PC_ID))]


async def test_a_peer_that_leaves_is_reported_to_the_bot():
    connection, _ = engine_side()
    bot_transport = SmallWebRTCTransport(connection, TransportParams())
    events = events_of(bot_transport, "on_client_disconnected")

    async with running([bot_transport.input(), bot_transport.output()]):
        await connection.handle_state("connected")
        await connection.handle_closed()
        event = await asyncio.wait_for(events.get(), DUE_S)

    assert event == ("on_client_disconnected", (connection,))


async def test_capturing_the_peers_video_tells_the_engine_what_to_forward():
    connection, outbox = engine_side()
    bot_transport = SmallWebRTCTransport(connection, TransportParams(video_in_enabled=True))

    async with running([bot_transport.input(), bot_transport.output()]):
        await connection.handle_state("connected")
        await bot_transport.capture_participant_video(PC_ID, on_request_only=True)
        on_request, _ = await next_sent(outbox, MediaCaptureSet)
        with pytest.warns(DeprecationWarning):
            await bot_transport.capture_participant_video(MediaSource.SCREEN_VIDEO)  # the older form: every frame
        every_frame, _ = await next_sent(outbox, MediaCaptureSet)

    assert on_request == MediaCaptureSet(PC_ID, MediaSource.CAMERA, False)
    assert every_frame == MediaCaptureSet(PC_ID, MediaSource.SCREEN_VIDEO, True)


async def test_audio_sent_through_the_transport_reaches_the_engine():
    connection, outbox = engine_side()
    bot_transport = SmallWebRTCTransport(connection, TransportParams(audio_out_enabled=True))

    async with running([bot_transport.input(), bot_transport.output()]):
        await connection.handle_state("connected")
        await bot_transport.send_audio(OutputAudioRawFrame(tone(440, 24000, 1, 0.1), 24000, 1))
        message, [packet] = await next_sent(outbox, AudioOut)

    assert message.seq == 1 and packet


async def test_on_pipecats_own_connection_it_is_pipecats_own_transport():
    # Pipecat's runner (`python bot.py -t webrtc`) gives the bot Pipecat's connection, a peer in the bot's process.
    connection = pipecat_connection.SmallWebRTCConnection(ice_servers=[])
    try:
        bot_transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(audio_in_enabled=True))
        assert type(bot_transport) is pipecat_transport.SmallWebRTCTransport
        assert type(bot_transport.input()) is pipecat_transport.SmallWebRTCInputTransport
    finally:
        await connection.disconnect()
