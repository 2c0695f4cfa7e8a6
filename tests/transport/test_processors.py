"""Pipecat's input and output processors in a running pipeline, on a connection whose engine side the test plays."""

import json

from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
    UserImageRequestFrame,
)
from pipecat.transports.base_transport import TransportParams

from engine.common.protocol import (
    AppMessageOut,
    AudioOut,
    AudioOutClear,
    MediaCaptureSet,
    MediaSource,
)
from tests.support.link import next_sent
from tests.support.media import (
    PC_ID,
    Recorder,
    encoded_audio,
    encoded_video,
    engine_side,
    running,
    tone,
)
from transport.client import SmallWebRTCCallbacks, SmallWebRTCClient
from transport.processors import SmallWebRTCInputTransport, SmallWebRTCOutputTransport


async def ignore(*args):
    pass


def processors(params: TransportParams, *recorded: type):
    """A connection, its outbox, and ``input -> recorder -> output`` on one client of it."""
    connection, outbox = engine_side()
    client = SmallWebRTCClient(
        connection,
        SmallWebRTCCallbacks(on_app_message=ignore, on_client_connected=ignore, on_client_disconnected=ignore),
    )
    recorder = Recorder(*recorded)
    return connection, outbox, [SmallWebRTCInputTransport(client, params), recorder, SmallWebRTCOutputTransport(client, params)]


async def test_the_peers_audio_enters_the_pipeline_at_its_rate():
    connection, _, pipeline = processors(TransportParams(audio_in_enabled=True), InputAudioRawFrame)

    async with running(pipeline, audio_in_sample_rate=16000):
        await connection.handle_state("connected")
        for message, payload in encoded_audio(tone(440, 48000, 1, 0.1)):
            connection.deliver_media(message, payload)
        frame = await pipeline[1].next()

    assert (frame.sample_rate, frame.num_channels, len(frame.audio)) == (16000, 1, 640)


async def test_video_on_request_only_is_forwarded_by_the_engine_only_while_a_request_waits():
    connection, outbox, pipeline = processors(TransportParams(video_in_enabled=True), UserImageRawFrame)
    input_transport = pipeline[0]

    async with running(pipeline) as worker:
        await connection.handle_state("connected")
        await input_transport.capture_participant_media(MediaSource.CAMERA, framerate=0)
        message, _ = await next_sent(outbox, MediaCaptureSet)
        assert message == MediaCaptureSet(PC_ID, MediaSource.CAMERA, False)

        request = UserImageRequestFrame(user_id=PC_ID, text="what is this?", video_source=MediaSource.CAMERA)
        await worker.queue_frame(request)
        message, _ = await next_sent(outbox, MediaCaptureSet)
        assert message == MediaCaptureSet(PC_ID, MediaSource.CAMERA, True)

        for message, payload in encoded_video(1, {1}):
            connection.deliver_media(message, payload)
        image = await pipeline[1].next()
        message, _ = await next_sent(outbox, MediaCaptureSet)

    assert (image.format, image.text, image.request) == ("RGB", "what is this?", request)
    assert message == MediaCaptureSet(PC_ID, MediaSource.CAMERA, False)


async def test_the_bots_audio_and_messages_leave_and_an_interruption_clears_the_audio():
    connection, outbox, pipeline = processors(TransportParams(audio_out_enabled=True))

    async with running(pipeline) as worker:
        await connection.handle_state("connected")
        await worker.queue_frame(OutputAudioRawFrame(tone(440, 24000, 1, 0.1), 24000, 1))
        for seq in (1, 2, 3):  # acknowledged as the engine's sender takes them
            message, _ = await next_sent(outbox, AudioOut)
            assert message.seq == seq
            connection.handle_audio_ack(message.seq)
        await worker.queue_frame(InterruptionFrame())
        await next_sent(outbox, AudioOutClear)
        await worker.queue_frame(OutputTransportMessageUrgentFrame(message={"bye": True}))
        message, _ = await next_sent(outbox, AppMessageOut)

    assert json.loads(message.json) == {"bye": True}
