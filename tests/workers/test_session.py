"""A worker's session: the bot's arguments, the engine's messages in order, and how a session ends.

Each test runs a real ``Session`` with a bot written here and reads what it
sends the engine from a real ``Outbox``.
"""

import asyncio
import gc
import weakref
from dataclasses import fields

import pytest
import zmq
from pipecat.runner.types import SmallWebRTCRunnerArguments
from pipecat.utils.file_storage import FileStorage, LocalFileStorage

from engine.common.link import Outbox
from engine.common.protocol import (
    AppMessageIn,
    AppMessageOut,
    AudioIn,
    AudioOut,
    MediaKind,
    MediaLane,
    PeerStateChange,
    SessionClose,
    SessionOpen,
    TrackStatusChange,
    VideoOut,
)
from tests.support.link import sent_messages, until
from tests.support.media import encoded_audio, encoded_video
from tests.support.workers import greeter
from transport.connection import SmallWebRTCConnection
from transport.media.codecs import OpusEncoder
from workers.session import HostRunnerArguments, Session

OPENING = SessionOpen("pc-1", "runner-1", {"video": False})


def start(bot, grace_s: float = 5.0, file_storage: FileStorage | None = None) -> tuple[Session, Outbox, asyncio.Task]:
    """A session of ``bot`` for OPENING, running, and the outbox it sends to."""
    outbox = Outbox("to engine")
    session = Session(OPENING, outbox, bot, "worker-1", grace_s, file_storage)
    return session, outbox, asyncio.create_task(session.run())


async def test_the_bot_gets_every_runner_argument_as_pipecats_runner_sets_it(tmp_path):
    received = []

    async def bot(runner_args):
        received.append(runner_args)

    storage = LocalFileStorage(str(tmp_path))
    session, _, running = start(bot, file_storage=storage)
    await asyncio.wait_for(running, 5)
    [args] = received
    assert isinstance(args, HostRunnerArguments) and isinstance(args, SmallWebRTCRunnerArguments)
    assert isinstance(args.webrtc_connection, SmallWebRTCConnection)
    assert args.webrtc_connection.pc_id == "pc-1"
    # Pipecat's runner sets the signal flags False and leaves the idle timeout its default; cli_args
    # is its own command line, which a host other than the runner does not have.
    runner_defaults = SmallWebRTCRunnerArguments(webrtc_connection=None)
    expected = {
        "webrtc_connection": session.connection,
        "handle_sigint": False,
        "handle_sigterm": False,
        "pipeline_idle_timeout_secs": runner_defaults.pipeline_idle_timeout_secs,
        "body": {"video": False},
        "call_data": None,
        "session_id": "runner-1",
        "cli_args": None,
        "file_storage": storage,
    }
    # A field a new Pipecat release adds fails here, by name, until it is set as its runner sets it.
    assert {field.name for field in fields(SmallWebRTCRunnerArguments)} == expected.keys()
    assert {name: getattr(args, name) for name in expected} == expected
    assert args.worker_id == "worker-1"


async def test_engine_messages_reach_the_connection_in_order():
    events = []
    ready, all_in = asyncio.Event(), asyncio.Event()

    async def bot(runner_args):
        connection = runner_args.webrtc_connection

        def record(*event):
            events.append(event)
            if len(events) == 4:
                all_in.set()

        @connection.event_handler("connected")
        async def on_connected(connection):
            record("connected")

        @connection.event_handler("app-message")
        async def on_app_message(connection, message):
            record("app-message", message)

        @connection.event_handler("track-status")
        async def on_track_status(connection, index, enabled):
            record("track-status", index, enabled)

        ready.set()
        await all_in.wait()

    session, outbox, running = start(bot)
    await asyncio.wait_for(ready.wait(), 5)
    session.deliver(PeerStateChange("pc-1", "connected"), [])
    session.deliver(AppMessageIn("pc-1", '{"hello": [1, 2]}'), [])
    session.deliver(TrackStatusChange("pc-1", 1, False), [])
    session.deliver(AppMessageIn("pc-1", '"second"'), [])
    await asyncio.wait_for(running, 5)
    assert events == [
        ("connected",),
        ("app-message", {"hello": [1, 2]}),
        ("track-status", 1, False),
        ("app-message", "second"),
    ]
    assert session.connection.is_connected() is False  # the bot never called connect()
    assert session.connection.video_input_track().is_enabled() is False
    assert sent_messages(outbox) == [SessionClose("pc-1", "bot ended")]


async def test_peer_audio_goes_straight_to_the_connections_microphone_track():
    heard = []

    async def listener(runner_args):
        heard.append(await runner_args.webrtc_connection.audio_input_track().recv())

    session, _, running = start(listener)
    session.deliver(AudioIn("pc-1", "audio/opus", 960), [zmq.Frame(OpusEncoder().encode(bytes(1920)))])
    await asyncio.wait_for(running, 5)
    [frame] = heard
    assert (frame.sample_rate, frame.samples) == (48000, 960)


async def test_a_bot_that_returns_ends_the_session_with_bot_ended():
    async def returning(runner_args):
        runner_args.webrtc_connection.send_app_message({"bye": True})

    _, outbox, running = start(returning)
    await asyncio.wait_for(running, 5)
    assert sent_messages(outbox) == [AppMessageOut("pc-1", '{"bye": true}'), SessionClose("pc-1", "bot ended")]


async def test_a_bot_that_raises_ends_the_session_with_bot_failed():
    async def raising(runner_args):
        await asyncio.sleep(0)
        raise RuntimeError("no model today")

    _, outbox, running = start(raising)
    await asyncio.wait_for(running, 5)
    assert sent_messages(outbox) == [SessionClose("pc-1", "bot failed: RuntimeError: no model today")]


async def test_engine_close_lets_the_bot_end_within_its_grace():
    session, outbox, running = start(greeter, grace_s=60)
    await until(lambda: len(outbox.mailbox))  # greeter said hello: it listens for "closed"
    session.deliver(SessionClose("pc-1", "peer left"), [])
    # greeter ends when its peer is "closed": long before a 60 s grace would run out.
    await asyncio.wait_for(running, 5)
    # The engine ended it, so the worker does not tell it back.
    [hello] = sent_messages(outbox)
    assert isinstance(hello, AppMessageOut) and '"session_id": "runner-1"' in hello.json


async def test_engine_close_cancels_a_bot_still_running_after_its_grace():
    ready, cancelled = asyncio.Event(), asyncio.Event()
    states = []

    async def hanging(runner_args):
        @runner_args.webrtc_connection.event_handler("closed")
        async def on_closed(connection):
            states.append("closed")

        ready.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    session, outbox, running = start(hanging, grace_s=0.2)
    await asyncio.wait_for(ready.wait(), 5)
    session.deliver(SessionClose("pc-1", "peer left"), [])
    await asyncio.wait_for(running, 5)
    assert cancelled.is_set()
    assert states == ["closed"]  # the bot was told before it was cancelled
    assert sent_messages(outbox) == []


async def test_a_session_the_worker_closes_ends_as_if_its_peer_left_without_a_close_to_the_engine():
    # The worker is stopping: the engine learns that from the worker itself, not session by session.
    session, outbox, running = start(greeter)
    await until(lambda: len(outbox.mailbox))
    session.close("worker stopping")
    await asyncio.wait_for(running, 5)
    assert [type(m) for m in sent_messages(outbox)] == [AppMessageOut]


async def test_the_session_forgets_its_media_lanes_in_the_outbox_at_the_end():
    release = asyncio.Event()

    async def bot(runner_args):
        await release.wait()

    _, outbox, running = start(bot)
    outbox.send_bounded(MediaLane("pc-1", MediaKind.AUDIO), 25, AudioOut("pc-1", 1), b"opus")
    outbox.send_bounded(MediaLane("pc-1", MediaKind.VIDEO), 4, VideoOut("pc-1", 1, True), b"vp8")
    outbox.send_bounded(MediaLane("pc-2", MediaKind.AUDIO), 25, AudioOut("pc-2", 1), b"opus")
    release.set()
    await asyncio.wait_for(running, 5)
    assert sent_messages(outbox) == [SessionClose("pc-1", "bot ended"), AudioOut("pc-2", 1)]


@pytest.mark.parametrize("state", ["connecting", "disconnected", "failed"])
async def test_each_peer_state_fires_its_event(state):
    ready, fired = asyncio.Event(), asyncio.Event()

    async def bot(runner_args):
        @runner_args.webrtc_connection.event_handler(state)
        async def on_state(connection):
            fired.set()

        ready.set()
        await fired.wait()

    session, _, running = start(bot)
    await asyncio.wait_for(ready.wait(), 5)
    session.deliver(PeerStateChange("pc-1", state), [])
    await asyncio.wait_for(running, 5)


class _Client:
    """Holds the connection as ``SmallWebRTCClient`` does, while its event handlers hold it."""

    def __init__(self, connection):
        self.connection = connection
        self.closed = asyncio.Event()


def _live(*type_names: str) -> int:
    return sum(type(obj).__name__ in type_names for obj in gc.get_objects())


async def test_an_ended_session_is_freed_without_waiting_for_a_garbage_collection():
    # A worker left running would otherwise hold each ended session's connection,
    # decoders and pictures until a full collection, which a large heap makes rare.
    got_media = asyncio.Event()

    async def client_bot(runner_args):
        client = _Client(runner_args.webrtc_connection)

        @client.connection.event_handler("closed")
        async def on_closed(connection):
            client.closed.set()

        await client.connection.video_input_track().recv()
        await client.connection.audio_input_track().recv()
        got_media.set()
        await client.closed.wait()

    gc.collect()
    decoders_before = _live("MediaDecoder", "Vp8Decoder", "OpusDecoder")
    gc.disable()
    try:
        session, _, running = start(client_bot)
        for message, payload in encoded_video(3, {1}) + encoded_audio(bytes(1920 * 3)):
            session.deliver(message, payload)
        await asyncio.wait_for(got_media.wait(), 5)
        session.deliver(SessionClose("pc-1", "peer left"), [])
        await asyncio.wait_for(running, 5)
        await asyncio.sleep(0.1)  # the cancelled decoding task finishes
        connection = weakref.ref(session.connection)
        del session, running
        assert connection() is None
        assert _live("MediaDecoder", "Vp8Decoder", "OpusDecoder") == decoders_before
    finally:
        gc.enable()
