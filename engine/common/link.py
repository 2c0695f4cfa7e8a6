"""ZeroMQ sockets of the engine-worker link, the pump that feeds them and the loop that reads them.

The engine binds one ROUTER socket; each worker connects one DEALER whose
identity is its worker id. Nothing on either side writes to a socket directly:
actors put messages in a ``Mailbox`` and one pump per destination sends them,
so a slow reader only ever fills (and drops from) its own mailbox.

Both ends move messages in batches: a pump that wakes sends everything its
mailbox holds, and a reader that wakes takes everything the socket holds,
each without waiting (and without an asyncio future) per message. Under load,
when messages pile up between two turns of the event loop, a message then
costs a few microseconds instead of a wake-up.
"""

import asyncio
import os
from collections.abc import Callable

import zmq
import zmq.auth
from loguru import logger

from engine.common.mailbox import Mailbox, MailboxOverflow
from engine.common.protocol import MediaLane, Message, encode

# Messages buffered per pipe on each side (send and receive) before the
# sender is pushed back. Small on purpose: the mailboxes ahead of the socket
# drop stale media, a deep socket buffer would only add latency.
PIPE_HWM = 16
# How long a pump waits before retrying a pipe that is full.
FULL_PIPE_RETRY_S = 0.002
# Messages a pump sends, or a reader takes, before letting the event loop run other work.
BATCH_MESSAGES = 64

Frames = list  # [header, *payload]: the parts of one multipart message


def frames(message: Message, *payload) -> Frames:
    """The multipart form of a message and its media payload."""
    return [encode(message), *payload]


class Outbox:
    """Messages for the other side of the link, queued by policy and sent by one pump.

    Control messages are never dropped; if the other side falls so far behind
    that they pile up, the outbox is marked broken (its owner treats the peer
    process as lost) and takes no more.
    """

    def __init__(self, name: str, on_drop: Callable[[MediaLane], None] | None = None):
        """Initialize the outbox.

        Args:
            name: Who the messages are for, in logs.
            on_drop: Called with the lane of every dropped media item.
        """
        self.mailbox: Mailbox[Frames] = Mailbox(name, on_drop=on_drop)
        self.broken: str | None = None

    def send(self, message: Message, *payload) -> None:
        """Queue a control message."""
        if self.broken:
            return
        try:
            self.mailbox.put(frames(message, *payload))
        except MailboxOverflow as e:
            self.broken = f"stuck: {e}"
            logger.error(self.broken)

    def send_bounded(self, lane: MediaLane, limit: int, message: Message, *payload) -> None:
        """Queue media that drops its oldest unsent item past ``limit`` (audio)."""
        if not self.broken:
            self.mailbox.put_bounded(lane, frames(message, *payload), limit)

    def forget_session(self, session_id: str) -> None:
        """Drop a session's media lanes with their unsent items (the session ended or moved)."""
        self.mailbox.discard_lanes(lambda lane: isinstance(lane, MediaLane) and lane.session_id == session_id)

    async def pump(self, send: Callable[[Frames], bool]) -> None:
        """Send the queued messages in the mailbox's order until cancelled.

        Args:
            send: Sends one message without waiting; False if the pipe is
                full, and the message is tried again shortly.
        """
        while True:
            parts = await self.mailbox.get()
            sent = 0
            while parts is not None:
                while not send(parts):
                    await asyncio.sleep(FULL_PIPE_RETRY_S)
                sent += 1
                if sent % BATCH_MESSAGES == 0:
                    await asyncio.sleep(0)
                parts = self.mailbox.get_nowait()


class LinkSocket:
    """One end of the link on the event loop: sends that never wait, and every message received handed on as it comes.

    The socket is a plain one, read when the event loop sees its file
    descriptor readable: one wake-up takes every message queued (up to
    ``BATCH_MESSAGES`` before other work runs), with no asyncio future per
    message. ZeroMQ signals that descriptor only on a change of state, and a
    send can consume the signal of messages that arrived meanwhile, so every
    send is followed by a look for input too.
    """

    def __init__(self, socket: zmq.Socket, handle: Callable[[list[zmq.Frame]], None]):
        """Start reading the socket on the running loop.

        Args:
            socket: A plain (not ``zmq.asyncio``) ROUTER or DEALER.
            handle: Called with the frames of each message received, in order.
        """
        self.socket = socket
        self._handle = handle
        self._loop = asyncio.get_running_loop()
        self._read_scheduled = False
        self._loop.add_reader(socket.FD, self._read)
        self._read_soon()

    def send(self, parts: Frames) -> bool:
        """Send one message if the pipe takes it now; False if it is full.

        Raises:
            zmq.ZMQError: EHOSTUNREACH for a ROUTER's identity not connected.
        """
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        finally:
            self._read_soon()

    def close(self) -> None:
        """Stop reading, and close the socket."""
        if not self.socket.closed:
            self._loop.remove_reader(self.socket.FD)
            self.socket.close(linger=0)

    def _read_soon(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._read)

    def _read(self) -> None:
        self._read_scheduled = False
        socket = self.socket
        if socket.closed:
            return
        for _ in range(BATCH_MESSAGES):
            # Reading the events also takes in what ZeroMQ has signalled.
            if not socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                self._handle(parts)
            except Exception:
                logger.exception("error handling a message from the link")
        self._read_soon()  # more are queued: take them after the loop's other work


def bind_router(
    context: zmq.Context, endpoint: str, curve_secret_key_file: str = "", silent_after_s: float = 3.0
) -> zmq.Socket:
    """The engine's socket, bound to ``endpoint``.

    It reports a full or vanished worker pipe instead of silently dropping, so
    the sender can retry (full) or give up (gone).

    A worker id belongs to the one connection that holds it: libzmq ignores a
    second connection presenting an id in use (there is no ROUTER_HANDOVER), so
    naming a live worker gets nobody its sessions' messages. For the id of a
    worker whose machine or network went away without closing the connection
    to come free, the socket sends ZMTP heartbeats and closes a connection
    that sends nothing, not even their answers, for ``silent_after_s``.

    With a CurveZMQ key it is a Curve server: the link is encrypted, and the
    context's authenticator decides which worker keys may connect. An ipc://
    socket has no keys: its file is made readable and writable by this user
    only (connecting needs write access), so no other user of the machine can
    join as a worker. It is made so as it is bound, as a chmod after the bind
    would leave a moment in which another user could connect, and stay.

    Args:
        context: The engine's context.
        endpoint: ``ipc://path`` or ``tcp://address:port``.
        curve_secret_key_file: The engine's secret key file, for a Curve server.
        silent_after_s: How long a connection may send nothing before it is closed.
    """
    socket = context.socket(zmq.ROUTER)
    if curve_secret_key_file:
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(curve_secret_key_file)
        socket.curve_server = True
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.SNDHWM, PIPE_HWM)
    socket.setsockopt(zmq.RCVHWM, PIPE_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    # A ping every third of the timeout: one late answer does not close a live connection.
    socket.setsockopt(zmq.HEARTBEAT_IVL, max(1, round(silent_after_s * 1000 / 3)))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, round(silent_after_s * 1000)))
    # libzmq creates an ipc socket's file in this thread, during bind: the umask decides its mode.
    umask = os.umask(0o177) if endpoint.startswith("ipc://") else None
    try:
        socket.bind(endpoint)
    finally:
        if umask is not None:
            os.umask(umask)
    return socket


def sender_key(frame: zmq.Frame) -> str | None:
    """The CurveZMQ public key (z85) that the sender of a received frame authenticated with.

    The engine's authenticator gives each connection it lets in this key as
    its ZAP User-Id, and libzmq attaches it to every message of the
    connection: a peer cannot choose it, unlike its socket identity.

    Returns:
        The key, or None for a connection without Curve (an ipc:// link).
    """
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


def connect_dealer(
    context: zmq.Context,
    endpoint: str,
    identity: str,
    curve_secret_key_file: str = "",
    curve_server_key_file: str = "",
) -> zmq.Socket:
    """A worker's socket, connected to the engine at ``endpoint`` (with its CurveZMQ keys, if given).

    It sends no ZMTP heartbeats of its own: a worker that hears nothing from
    the engine for engine_silent_after_s leaves, and a new connection would not
    register it again anyway.
    """
    socket = context.socket(zmq.DEALER)
    if curve_secret_key_file:
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(curve_secret_key_file)
        socket.curve_serverkey, _ = zmq.auth.load_certificate(curve_server_key_file)
    socket.setsockopt(zmq.IDENTITY, identity.encode())
    socket.setsockopt(zmq.SNDHWM, PIPE_HWM)
    socket.setsockopt(zmq.RCVHWM, PIPE_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def send_to_worker_now(router: LinkSocket, identity: bytes, parts: Frames) -> bool | None:
    """Send one message to one worker if its pipe takes it now.

    Returns:
        True if sent, False if the worker's pipe is full, None if the worker is
        not connected (the message is dropped).
    """
    try:
        return router.send([identity, *parts])
    except zmq.ZMQError as e:
        if e.errno == zmq.EHOSTUNREACH:
            logger.debug(f"worker {identity.decode(errors='replace')} is not connected")
            return None
        raise
