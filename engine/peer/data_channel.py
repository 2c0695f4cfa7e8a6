"""The peer's "chat" data channel, as its actor drives it.

The client sends ``ping`` keepalives, ``signalling`` envelopes (``trackStatus``)
and the app's JSON messages on it; the engine sends back the bot's app
messages and its own signalling (``renegotiate``, ``peerLeft``). Messages for
the peer wait while the channel is not open yet, and app messages from the
peer wait while the bot is not ready for them.
"""

import asyncio
import json
import time
from functools import partial
from collections import deque
from collections.abc import Callable

from aiortc import RTCDataChannel, RTCPeerConnection

from engine.common.protocol import SOURCE_BY_RECEIVER, AppMessageIn, TrackStatusChange
from engine.common.settings import HostSettings
from engine.peer.events import (
    DataChannelArrived,
    DataChannelDeadline,
    DataChannelMessage,
    DataChannelOpened,
    PcEvent,
)
from engine.peer.session import PeerSession

SIGNALLING_TYPE = "signalling"
# Messages for the peer held while its data channel is not open yet.
MAX_OUTGOING_QUEUE = 50
# App messages from the peer held until the bot is ready for them.
MAX_HELD_APP_MESSAGES = 100
# After the answer to a renegotiation we asked for, this long passes before we ask again.
RENEGOTIATION_GUARD_S = 2.0
# How long a closing session waits for "peerLeft" to leave the data channel.
PEER_LEFT_FLUSH_S = 0.5
# JSON nested deeper than this is refused: the worker and the bot parse it again.
MAX_JSON_DEPTH = 32
# A warning about dropped messages comes at most this often, with their count.
DROP_WARNING_INTERVAL_S = 5.0
# How much of a refused message a log line quotes.
LOGGED_CHARS = 200


def _json_depth_over(value, limit: int) -> bool:
    """Whether parsed JSON nests deeper than ``limit`` (without recursing)."""
    pending = [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            pending.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


class _Drops:
    """Messages dropped for one reason: counted, and warned about at most every ``DROP_WARNING_INTERVAL_S``."""

    def __init__(self, session: PeerSession, what: str, count: Callable[[], None]):
        self._session = session
        self._what = what
        self._count_metric = count
        self._count = 0
        self._warned_at: float | None = None

    def add(self) -> None:
        """Count one drop, and warn with the count if the last warning is old enough."""
        self._count += 1
        self._count_metric()
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= DROP_WARNING_INTERVAL_S:
            self._warned_at = now
            self._session.log.warning(f"peer {self._session.pc_id}: {self._count} {self._what} so far")


class PeerDataChannel:
    """The data channel of the session's current peer connection, and what waits for it either way."""

    def __init__(
        self,
        session: PeerSession,
        settings: HostSettings,
        post: Callable[[PcEvent], None],
        on_track_status: Callable[[int, bool], None],
        count_drop: Callable[[str], None],
    ):
        """Initialize the part; the channel comes with a peer connection (``watch``).

        Args:
            session: The session it serves.
            settings: Host settings (ping window, data channel timeout).
            post: Puts an event in the actor's mailbox.
            on_track_status: Called with a receiver index and whether the peer
                now sends that source (``trackStatus``), before the worker hears of it.
            count_drop: Called with the reason of every message dropped (for the metrics).
        """
        self._session = session
        self._settings = settings
        self._post = post
        self._on_track_status = on_track_status
        self._count_drop = count_drop
        self._channel: RTCDataChannel | None = None
        self._last_ping: float | None = None
        self._outgoing: list[str] = []
        self._queueing = True
        self._held_app_messages: deque[str] = deque(maxlen=MAX_HELD_APP_MESSAGES)
        self._deadline_timer: asyncio.Task | None = None
        # While a renegotiation we asked for is under way (until 2 s after its
        # answer), no other is asked for.
        self._renegotiating_until: float | None = None
        # A token bucket for the peer's messages: a second's worth at once.
        self._message_tokens = float(settings.max_data_channel_messages_per_s)
        self._tokens_at = time.monotonic()
        per_s = settings.max_data_channel_messages_per_s
        self._flood_drops = _Drops(
            session, f"messages from the peer dropped over {per_s} a second", partial(count_drop, "flood")
        )
        self._unread_drops = _Drops(
            session,
            f"messages for the peer dropped while its send buffer held {settings.max_data_channel_buffered_bytes} bytes",
            partial(count_drop, "send_buffer_full"),
        )

    # ---- the channel's life ----

    def watch(self, pc: RTCPeerConnection) -> None:
        """Post ``pc``'s data channel events to the mailbox; the channel of the connection before it is forgotten."""

        @pc.on("datachannel")
        def on_datachannel(channel):
            self._post(DataChannelArrived(pc, channel))

            @channel.on("open")
            def on_open():
                self._post(DataChannelOpened(pc))

            @channel.on("message")
            def on_message(message):
                self._post(DataChannelMessage(pc, message))

        self.forget()

    def forget(self) -> None:
        """Drop the channel and its keepalive: its peer connection is gone."""
        self._channel = None
        self._last_ping = None

    def arrived(self, channel: RTCDataChannel) -> None:
        """Take the peer's channel (``DataChannelArrived``)."""
        self._channel = channel
        if channel.readyState == "open":
            self._flush_outgoing()

    def opened(self) -> None:
        """Send what waited for the channel (``DataChannelOpened``)."""
        self._flush_outgoing()

    def start_deadline(self, pc: RTCPeerConnection) -> None:
        """Start the data channel timeout, once per session: ``pc`` has connected."""
        if self._deadline_timer is None:
            self._deadline_timer = asyncio.create_task(self._deadline(pc))

    async def _deadline(self, pc: RTCPeerConnection) -> None:
        await asyncio.sleep(self._settings.data_channel_timeout_s)
        self._post(DataChannelDeadline(pc))

    def deadline_passed(self) -> None:
        """Stop queueing for a channel that never opened (``DataChannelDeadline``)."""
        if self._is_open():
            return
        self._session.log.warning(
            f"peer {self._session.pc_id}: no data channel {self._settings.data_channel_timeout_s:g} s after connecting;"
            " dropping queued messages and queueing no more"
        )
        self._outgoing.clear()
        self._queueing = False

    def stop_deadline(self) -> None:
        """Cancel the data channel timeout: the channel opened, or the session ends."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()

    # ---- from the peer ----

    def keepalive_lapsed(self) -> bool:
        """Whether the peer's pings stopped for longer than the ping window (it never pinged: no)."""
        return self._last_ping is not None and time.monotonic() - self._last_ping > self._settings.ping_window_s

    def receive(self, message: str | bytes, bot_listening: bool) -> None:
        """Handle a message from the peer (``DataChannelMessage``).

        Args:
            message: The message as aiortc delivered it.
            bot_listening: Whether the bot has been told the peer is connected:
                app messages go to the worker now, or are held until then.
        """
        # The keepalive is a plain string, not JSON.
        if isinstance(message, str) and message.startswith("ping"):
            self._last_ping = time.monotonic()
            return
        if not self._take_token():
            self._flood_drops.add()
            return
        if isinstance(message, bytes):
            self._refuse("binary", f"a binary message ({len(message)} bytes)", message)
            return
        if len(message.encode()) > self._settings.max_data_channel_message_bytes:
            self._refuse("too_large", f"a message over {self._settings.max_data_channel_message_bytes} bytes", message)
            return
        try:
            parsed = json.loads(message)
        except RecursionError:
            self._refuse("too_deep", "a message nested too deep to parse", message)
            return
        except ValueError as e:
            self._refuse("not_json", f"a message that is not JSON ({e})", message)
            return
        if _json_depth_over(parsed, MAX_JSON_DEPTH):
            self._refuse("too_deep", f"a message nested deeper than {MAX_JSON_DEPTH}", message)
            return
        if isinstance(parsed, dict) and parsed.get("type") == SIGNALLING_TYPE and parsed.get("message"):
            self._receive_signalling(parsed["message"])
        elif bot_listening:
            self._session.to_worker(AppMessageIn(self._session.pc_id, message))
        else:
            if len(self._held_app_messages) == self._held_app_messages.maxlen:
                self._session.log.warning(f"peer {self._session.pc_id}: bot not ready, dropping the oldest held app message")
            self._held_app_messages.append(message)

    def _take_token(self) -> bool:
        now = time.monotonic()
        per_s = self._settings.max_data_channel_messages_per_s
        self._message_tokens = min(per_s, self._message_tokens + (now - self._tokens_at) * per_s)
        self._tokens_at = now
        if self._message_tokens < 1:
            return False
        self._message_tokens -= 1
        return True

    def _refuse(self, reason: str, what: str, message: str | bytes) -> None:
        self._count_drop(reason)
        self._session.log.warning(
            f"peer {self._session.pc_id}: ignoring {what} on the data channel: {message[:LOGGED_CHARS]!r}"
        )

    def release_held_app_messages(self) -> None:
        """Send the app messages held for the bot to the worker, in order: the bot now hears the peer."""
        while self._held_app_messages:
            self._session.to_worker(AppMessageIn(self._session.pc_id, self._held_app_messages.popleft()))

    def _receive_signalling(self, message) -> None:
        if not isinstance(message, dict) or message.get("type") != "trackStatus":
            self._session.log.warning(
                f"peer {self._session.pc_id}: ignoring unknown signalling message {repr(message)[:LOGGED_CHARS]}"
            )
            return
        index, enabled = message.get("receiver_index"), message.get("enabled")
        # type() is int: True and 1.0 equal 1, and would pass as receiver 1.
        if type(index) is not int or index not in SOURCE_BY_RECEIVER or not isinstance(enabled, bool):
            self._session.log.warning(
                f"peer {self._session.pc_id}: ignoring malformed trackStatus {repr(message)[:LOGGED_CHARS]}"
            )
            return
        self._on_track_status(index, enabled)
        self._session.to_worker(TrackStatusChange(self._session.pc_id, index, enabled))

    # ---- to the peer ----

    def send(self, text: str) -> None:
        """Send a message to the peer, or queue it (at most ``MAX_OUTGOING_QUEUE``) until the channel opens.

        A message is dropped while the channel's send buffer holds ``max_data_channel_buffered_bytes``.
        """
        if self._is_open() and self._channel.bufferedAmount >= self._settings.max_data_channel_buffered_bytes:
            self._unread_drops.add()
        elif self._is_open():
            self._channel.send(text)
        elif self._queueing and len(self._outgoing) < MAX_OUTGOING_QUEUE:
            self._outgoing.append(text)
        elif self._queueing:
            self._session.log.warning(
                f"peer {self._session.pc_id}: {MAX_OUTGOING_QUEUE} messages wait for the data channel, dropping one"
            )

    def ask_to_renegotiate(self) -> None:
        """Ask the peer for a new offer, unless one we asked for is under way."""
        if self._renegotiating_until is not None and time.monotonic() < self._renegotiating_until:
            return
        self._renegotiating_until = float("inf")
        self._send_signalling({"type": "renegotiate"})

    def answered(self) -> None:
        """An answer went out: a renegotiation we asked for is done, and we ask for none in the next 2 s."""
        if self._renegotiating_until is not None:
            self._renegotiating_until = time.monotonic() + RENEGOTIATION_GUARD_S

    async def say_peer_left(self) -> None:
        """Tell the peer the session ends (``peerLeft``), if the channel is open, and give it time to leave."""
        if not self._is_open():
            return
        self._send_signalling({"type": "peerLeft"})
        # Closing aborts the SCTP association and what it has not sent yet.
        deadline = time.monotonic() + PEER_LEFT_FLUSH_S
        while self._channel.bufferedAmount > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _is_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def _flush_outgoing(self) -> None:
        self.stop_deadline()
        while self._outgoing and self._channel is not None:
            self._channel.send(self._outgoing.pop(0))

    def _send_signalling(self, message: dict) -> None:
        self.send(json.dumps({"type": SIGNALLING_TYPE, "message": message}))
