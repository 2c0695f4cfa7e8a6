"""The engine-worker link: the outbox's queueing policy and pump, and the real ZeroMQ sockets (plain and CurveZMQ)."""

import asyncio
import shutil

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from engine.common.link import (
    LinkSocket,
    Outbox,
    bind_router,
    connect_dealer,
    frames,
    send_to_worker_now,
)
from engine.common.protocol import (
    AudioOut,
    MediaKind,
    MediaLane,
    SessionClose,
    SessionConnect,
    VideoOut,
    WorkerHeartbeat,
    WorkerRegister,
    decode_from_worker,
    encode,
)
from tests.support.link import ipc_endpoint, queued_frames, send_to_worker, sent_messages, until

AUDIO = MediaLane("s1", MediaKind.AUDIO)
VIDEO = MediaLane("s1", MediaKind.VIDEO)


# ---- the outbox ----


def test_control_messages_keep_their_order_and_go_before_media():
    outbox = Outbox("test")
    outbox.send_bounded(AUDIO, 10, AudioOut("s1", 1), b"opus")
    for index in range(50):
        outbox.send(SessionClose(f"s{index}", "gone"))
    sent = sent_messages(outbox)
    assert sent[:50] == [SessionClose(f"s{index}", "gone") for index in range(50)]
    assert sent[50:] == [AudioOut("s1", 1)]


def test_a_message_travels_with_its_payload_frames():
    outbox = Outbox("test")
    outbox.send(AudioOut("s1", 7), b"opus")
    assert queued_frames(outbox) == [[encode(AudioOut("s1", 7)), b"opus"]]


def test_send_bounded_drops_the_oldest_of_its_lane_and_counts_it():
    dropped = []
    outbox = Outbox("test", on_drop=dropped.append)
    for seq in range(1, 6):
        outbox.send_bounded(AUDIO, 2, AudioOut("s1", seq), b"opus")
    outbox.send_bounded(VIDEO, 2, VideoOut("s1", 1, True), b"vp8")
    assert dropped == [AUDIO] * 3
    assert outbox.mailbox.dropped[AUDIO] == 3
    # The lanes take turns; audio kept its two newest.
    assert sent_messages(outbox) == [AudioOut("s1", 4), VideoOut("s1", 1, True), AudioOut("s1", 5)]


def test_control_piling_up_breaks_the_outbox_which_then_takes_nothing():
    outbox = Outbox("test")
    message = SessionConnect("s1")
    while not outbox.broken:
        outbox.send(message)
        assert len(outbox.mailbox) <= 10_000
    assert "stuck" in outbox.broken
    held = len(outbox.mailbox)
    outbox.send(message)
    outbox.send_bounded(AUDIO, 10, AudioOut("s1", 1), b"opus")
    assert len(outbox.mailbox) == held


def test_forget_session_drops_only_that_sessions_media_lanes():
    outbox = Outbox("test")
    outbox.send_bounded(AUDIO, 10, AudioOut("s1", 1), b"a")
    outbox.send_bounded(VIDEO, 4, VideoOut("s1", 1, True), b"v")
    outbox.send_bounded(MediaLane("s2", MediaKind.AUDIO), 10, AudioOut("s2", 1), b"a")
    outbox.send(SessionClose("s1", "bot ended"))
    outbox.forget_session("s1")
    assert sent_messages(outbox) == [SessionClose("s1", "bot ended"), AudioOut("s2", 1)]


async def test_pump_sends_in_mailbox_order_and_waits_for_more():
    outbox = Outbox("test")
    sent = []
    wanted = asyncio.Event()

    def send(parts):
        sent.append(decode_from_worker(parts[0]))
        if len(sent) in (3, 4):
            wanted.set()
        return True

    outbox.send_bounded(AUDIO, 10, AudioOut("s1", 1), b"a")
    outbox.send_bounded(VIDEO, 4, VideoOut("s1", 1, True), b"v")
    outbox.send(SessionConnect("s1"))
    pump = asyncio.create_task(outbox.pump(send))
    try:
        await asyncio.wait_for(wanted.wait(), 5)
        assert sent == [SessionConnect("s1"), AudioOut("s1", 1), VideoOut("s1", 1, True)]
        # An empty outbox leaves the pump waiting; the next message goes out.
        wanted.clear()
        outbox.send(SessionClose("s1", "bot ended"))
        await asyncio.wait_for(wanted.wait(), 5)
        assert sent[-1] == SessionClose("s1", "bot ended")
    finally:
        pump.cancel()


# ---- the sockets ----


async def test_router_and_dealer_exchange_multipart_messages_by_worker_id(tmp_path):
    context = zmq.asyncio.Context()
    endpoint = ipc_endpoint(tmp_path)
    router = bind_router(context, endpoint)
    dealer = connect_dealer(context, endpoint, "worker-1")
    try:
        register = WorkerRegister("worker-1", 42, "host", 4)
        await dealer.send_multipart(frames(register, b"payload"))
        identity, header, payload = await asyncio.wait_for(router.recv_multipart(), 5)
        assert identity == b"worker-1"
        assert (decode_from_worker(header), payload) == (register, b"payload")

        assert await send_to_worker(router, identity, [b"to the worker", b"more"]) is True
        assert await asyncio.wait_for(dealer.recv_multipart(), 5) == [b"to the worker", b"more"]
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()


async def test_link_sockets_carry_every_message_both_ways_while_both_send_at_once(tmp_path):
    # A send can take in the signal of messages that arrived meanwhile: the
    # reader must still see them (it once waited for a signal that never came).
    context = zmq.Context()
    endpoint = ipc_endpoint(tmp_path)
    at_engine: list[bytes] = []
    at_worker: list[bytes] = []
    all_there = asyncio.Event()

    def arrived(into: list[bytes]):
        def handle(parts):
            into.append(parts[-1].bytes)
            if len(at_engine) == len(at_worker) == 2000:
                all_there.set()

        return handle

    engine = LinkSocket(bind_router(context, endpoint), arrived(at_engine))
    worker = LinkSocket(connect_dealer(context, endpoint, "w1"), arrived(at_worker))
    try:
        assert worker.send([b"hello"])
        await until(lambda: at_engine)
        at_engine.clear()
        for index in range(2000):
            message = str(index).encode()
            while not send_to_worker_now(engine, b"w1", [message]):
                await asyncio.sleep(0.001)
            while not worker.send([message]):
                await asyncio.sleep(0.001)
        await asyncio.wait_for(all_there.wait(), 10)
        assert at_engine == at_worker == [str(index).encode() for index in range(2000)]
    finally:
        engine.close()
        worker.close()
        context.term()


async def test_a_link_socket_tells_a_full_pipe_from_a_worker_not_connected(tmp_path):
    context = zmq.Context()
    engine = LinkSocket(bind_router(context, ipc_endpoint(tmp_path)), lambda _: None)
    try:
        assert send_to_worker_now(engine, b"nobody", [b"hello"]) is None
    finally:
        engine.close()
        context.term()


async def test_curve_lets_an_authorized_worker_through_and_not_an_unknown_one(tmp_path):
    keys, authorized, other = tmp_path / "keys", tmp_path / "authorized", tmp_path / "other"
    for directory in (keys, authorized, other):
        directory.mkdir()
    engine_public, engine_secret = zmq.auth.create_certificates(keys, "engine")
    worker_public, worker_secret = zmq.auth.create_certificates(keys, "worker")
    shutil.copy(worker_public, authorized)  # the engine knows the worker's public key only
    _, stranger_secret = zmq.auth.create_certificates(other, "stranger")

    context = zmq.asyncio.Context()
    authenticator = AsyncioAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(authorized))
    endpoint = ipc_endpoint(tmp_path)
    router = bind_router(context, endpoint, engine_secret)
    stranger = connect_dealer(context, endpoint, "stranger", stranger_secret, engine_public)
    worker = connect_dealer(context, endpoint, "worker", worker_secret, engine_public)
    try:
        await stranger.send_multipart(frames(WorkerHeartbeat(0.0)))
        await worker.send_multipart(frames(WorkerRegister("worker", 1, "host", 2)))
        identity, header = await asyncio.wait_for(router.recv_multipart(), 5)
        assert (identity, decode_from_worker(header)) == (b"worker", WorkerRegister("worker", 1, "host", 2))
        # The authorized worker's reply reaches it over the encrypted link; the stranger never got in.
        assert await send_to_worker(router, b"worker", [b"accepted"]) is True
        assert await asyncio.wait_for(worker.recv_multipart(), 5) == [b"accepted"]
        assert await send_to_worker(router, b"stranger", [b"hello"]) is False
        assert await router.poll(200) == 0
    finally:
        for socket in (stranger, worker, router):
            socket.close(linger=0)
        authenticator.stop()
        context.term()
