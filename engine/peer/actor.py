"""The peer's actor: its mailbox loop, signaling (offers, candidates) and the session's life.

The actor reads its mailbox from one task and owns all the session's state:
the peer connection, the data channel part and the media part, which it calls.
It reports the peer's state to the worker as the bot should see it, watches
liveness (keepalives, timers, the grace a failed connection gets for a
restart), moves the session to another worker when its own is lost, and ends
the session.
"""

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription, candidate_to_sdp

from engine.aiortc_seam import ask_network_mdns, mdns_answered_from
from engine.common.mailbox import Mailbox
from engine.common.protocol import (
    VIDEO_QUEUE_FRAMES,
    AppMessageOut,
    AudioOut,
    AudioOutClear,
    MediaCaptureSet,
    MediaKind,
    MediaLane,
    OutputOpen,
    PeerRenegotiate,
    PeerState,
    PeerStateChange,
    SessionClose,
    SessionConnect,
    SessionOpen,
    VideoInKeyframeRequest,
    VideoOut,
)
from engine.common.settings import HostSettings
from engine.ice import EndOfCandidates, ends_candidates_in_use, ice_servers_now
from engine.metrics import HostMetrics, SessionOutcome
from engine.peer.data_channel import PeerDataChannel
from engine.peer.events import (
    ConnectionStateChanged,
    DataChannelArrived,
    DataChannelDeadline,
    DataChannelMessage,
    DataChannelOpened,
    LivenessTick,
    MdnsNameResolved,
    PcEvent,
)
from engine.peer.mdns import MdnsLookup, MdnsResolver, take_mdns_out_of_offer
from engine.peer.media import PeerMedia
from engine.peer.session import PeerSession
from engine.registry import WorkerHandle

if TYPE_CHECKING:
    from loguru import Logger

# How often the actor re-evaluates liveness (ping window, lost peers).
LIVENESS_TICK_S = 0.5


class SignalingError(Exception):
    """A request the peer connection cannot take (bad SDP, bad candidate)."""


@dataclass
class Offer:
    """HTTP: a new offer for this peer (first, renegotiation or restart)."""

    sdp: str
    type: str
    restart_pc: bool
    reply: asyncio.Future = field(repr=False)


@dataclass
class Candidates:
    """HTTP: trickled remote ICE candidates (``EndOfCandidates`` for one m-line, None for all)."""

    candidates: list
    reply: asyncio.Future = field(repr=False)


class Close(NamedTuple):
    """Close the session: from a timer, the engine, or a lost worker."""

    reason: str
    outcome: SessionOutcome
    tell_worker: bool = True


class _MoveTo(NamedTuple):
    """The engine: the session's worker was lost, this one takes over."""

    worker: WorkerHandle


class _WorkerMessage(NamedTuple):
    message: Any
    payload: list


class PeerActor:
    """Owns one peer connection for the life of its session (its ``pc_id`` outlives restarts)."""

    def __init__(
        self,
        opening: SessionOpen,
        settings: HostSettings,
        worker: WorkerHandle,
        metrics: HostMetrics,
        on_ended: Callable[["PeerActor"], None],
        *,
        pc_factory: Callable[[RTCConfiguration], RTCPeerConnection] = RTCPeerConnection,
        mdns_lookup: MdnsLookup = ask_network_mdns,
    ):
        """Initialize the actor; ``run()`` must be started to serve it.

        Args:
            opening: What a worker is sent to run this session's bot; its
                ``session_id`` is the pc_id handed to the client.
            settings: Host settings (ICE servers, timers).
            worker: The worker that runs this session's bot.
            metrics: Where frames and outcomes are counted.
            on_ended: Called once when the session has ended.
            pc_factory: Makes each peer connection (the first, and one per restart).
            mdns_lookup: Resolves the mDNS names of the peer's candidates (off the actor).
        """
        self.pc_id = opening.session_id
        self.opening = opening
        self.mailbox: Mailbox = Mailbox(f"peer {self.pc_id}")
        self._settings = settings
        self._metrics = metrics
        self._on_ended = on_ended
        self._pc_factory = pc_factory
        self._session = PeerSession(self.pc_id, worker)
        self._media = PeerMedia(self._session, metrics, settings)
        self._channel = PeerDataChannel(
            self._session,
            settings,
            self.mailbox.put,
            self._media.set_source_enabled,
            lambda reason: metrics.data_channel_dropped.labels(reason).inc(),
        )
        self._reported_state: PeerState = "new"
        self._disconnected_since: float | None = None
        # Set while a closed or failed peer connection may still be restarted.
        self._restart_deadline: float | None = None
        self._restart_reason = ""
        self._connecting_timer: asyncio.Task | None = None
        # The bot starts once the peer first connects: an offer that never connects costs no bot.
        self.bot_started_at: float | None = None
        self._ended = False
        # The distinct remote candidates the current peer connection has taken (in its offers or trickled).
        self._remote_candidates: set[str] = set()
        self._mdns = MdnsResolver(self._session, self.mailbox.put, mdns_lookup, settings.mdns_resolve_timeout_s)

    @property
    def worker(self) -> WorkerHandle:
        """The worker that runs the session's bot."""
        return self._session.worker

    @property
    def log(self) -> "Logger":
        """A logger bound to the session's pc_id and worker."""
        return self._session.log

    # ---- what other tasks may call: they only post to the mailbox ----

    async def offer(self, sdp: str, type: str, restart_pc: bool) -> dict:
        """Apply an offer and return the answer ``{"sdp", "type", "pc_id"}``.

        Raises:
            SignalingError: If the offer cannot be applied.
        """
        return await self._ask(lambda reply: Offer(sdp, type, restart_pc, reply))

    async def add_candidates(self, candidates: list) -> None:
        """Add trickled remote candidates.

        Raises:
            SignalingError: If a candidate is rejected.
        """
        await self._ask(lambda reply: Candidates(candidates, reply))

    def deliver(self, message, payload: list) -> None:
        """Hand the actor a message from its worker; media is dropped by policy, never queued without bound."""
        item = _WorkerMessage(message, payload)
        if isinstance(message, VideoOut):
            # Encoded frames: a drop shows as a gap the output track recovers from.
            self.mailbox.put_bounded(MediaLane(self.pc_id, MediaKind.VIDEO), item, VIDEO_QUEUE_FRAMES)
        else:
            # Bot audio is control: the worker's credit window already bounds
            # it, and each one must be acknowledged.
            self.mailbox.put(item)

    def move_to(self, worker: WorkerHandle) -> None:
        """Ask the actor to run its bot on another worker (its own was lost); the peer stays connected."""
        if not self._ended:
            self.mailbox.put_always(_MoveTo(worker))

    def close(self, reason: str, outcome: SessionOutcome, tell_worker: bool = True) -> None:
        """Ask the actor to end the session.

        Args:
            reason: Logged, and told to the worker.
            outcome: Why, as the metrics count it.
            tell_worker: Whether the worker still needs to hear of it.
        """
        if not self._ended:
            self.mailbox.put_always(Close(reason, outcome, tell_worker))

    @property
    def ended(self) -> bool:
        """Whether the session is over."""
        return self._ended

    async def _ask(self, make) -> Any:
        if self._ended:
            raise SignalingError(f"session {self.pc_id} has ended")
        reply = asyncio.get_running_loop().create_future()
        self.mailbox.put(make(reply))
        return await reply

    # ---- the actor ----

    async def run(self) -> None:
        """Serve the mailbox until the session ends."""
        ticker = asyncio.create_task(self._tick())
        try:
            while not self._ended:
                item = await self.mailbox.get()
                try:
                    await self._handle(item)
                except Exception as e:
                    refused = isinstance(e, SignalingError)
                    if refused:
                        # A request refused for what it asked: its client hears why, and a log line is enough.
                        self.log.warning(f"peer {self.pc_id}: refused {type(item).__name__}: {e}")
                    else:
                        self.log.exception(f"peer {self.pc_id}: error handling {type(item).__name__}: {e}")
                    if isinstance(item, (Offer, Candidates)) and not item.reply.done():
                        item.reply.set_exception(e if refused else SignalingError(str(e)))
        finally:
            ticker.cancel()
            await self._end("actor stopped", SessionOutcome.HOST_STOPPED, tell_worker=True, notify_peer=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_TICK_S)
            self.mailbox.put(LivenessTick(self._session.pc))

    async def _handle(self, item) -> None:
        match item:
            case _WorkerMessage(message, payload):
                await self._handle_worker_message(message, payload)
            # What a replaced or closed peer connection still reports is for nothing.
            case MdnsNameResolved(pc=pc) if pc is self._session.pc:
                await self._add_candidates(pc, self._mdns.resolved(item))
            case PcEvent(pc=pc) if pc is self._session.pc:
                await self._handle_pc_event(item)
            case Offer():
                await self._handle_offer(item)
            case Candidates(candidates, reply):
                await self._handle_candidates(candidates, reply)
            case Close(reason, outcome, tell_worker):
                await self._end(reason, outcome, tell_worker=tell_worker, notify_peer=True)
            case _MoveTo(worker):
                self._move_to(worker)

    # ---- signaling ----

    def _new_pc(self) -> None:
        config = RTCConfiguration(
            iceServers=[server.to_rtc() for server in ice_servers_now(self._settings)],
            # With aiortc's default policy the screen share's transceiver is
            # left off the bundled transport and its packets never arrive.
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )
        pc = self._pc_factory(config)

        @pc.on("connectionstatechange")
        def on_state():
            self.mailbox.put(ConnectionStateChanged(pc, pc.connectionState))

        self._channel.watch(pc)
        self._session.pc = pc
        self._restart_deadline = None
        # Counted from the offer, not from "connecting": a peer that never even starts ICE is closed too.
        self._cancel(self._connecting_timer)
        self._connecting_timer = self._after(
            self._settings.connecting_timeout_s, "no connection within the connecting timeout", SessionOutcome.CONNECT_TIMEOUT
        )

    async def _handle_offer(self, offer: Offer) -> None:
        if offer.type != "offer":
            raise SignalingError(f"expected an SDP of type 'offer', got {offer.type!r}")
        try:
            media = SessionDescription.parse(offer.sdp).media
            if not media:
                raise ValueError("it has no media section")
        except Exception as e:
            raise SignalingError(f"invalid offer SDP: {e}") from e
        # aiortc gives every media section a transceiver (and a receiver task).
        if len(media) > self._settings.max_media_sections:
            raise SignalingError(
                f"the offer has {len(media)} media sections, more than the {self._settings.max_media_sections} taken"
            )
        new_pc = self._session.pc is None or offer.restart_pc
        offered = {candidate_to_sdp(c) for m in media for c in m.ice_candidates}
        self._check_candidate_total(offered | (set() if new_pc else self._remote_candidates))
        if self._session.pc is None:
            self._new_pc()
        elif offer.restart_pc:
            self.log.info(f"peer {self.pc_id}: restarting the peer connection")
            await self._close_pc()
            self._new_pc()
        pc = self._session.pc
        sdp, later = take_mdns_out_of_offer(offer.sdp, media)
        try:
            # Should an mDNS name be left in it, aioice answers it from what is resolved, never from the network.
            with mdns_answered_from(self._mdns.answers):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=offer.type))
        except Exception as e:
            raise SignalingError(f"invalid offer SDP: {e}") from e
        self._remote_candidates = offered | (set() if new_pc else self._remote_candidates)
        await self._add_candidates(pc, later)
        self._media.prepare(pc.getTransceivers())
        await pc.setLocalDescription(await pc.createAnswer())
        self._media.answered()
        self._channel.answered()
        description = pc.localDescription
        offer.reply.set_result({"sdp": description.sdp, "type": description.type, "pc_id": self.pc_id})

    async def _handle_candidates(self, candidates: list, reply: asyncio.Future) -> None:
        # Candidates for a peer connection that died are for nothing.
        pc = self._session.pc
        # A candidate already taken is skipped: aioice would scan every one it
        # has for it. Under MAX_BUNDLE one transport takes them all, whatever the mid.
        fresh: dict[str | None, Any] = {}
        for candidate in candidates if pc is not None else []:
            if isinstance(candidate, EndOfCandidates):
                if not ends_candidates_in_use(candidate, pc.localDescription.sdp):
                    continue
                candidate = None  # aiortc's end of candidates
            key = None if candidate is None else candidate_to_sdp(candidate)
            if key not in self._remote_candidates:
                fresh.setdefault(key, candidate)
        taken = self._remote_candidates | (fresh.keys() - {None})
        try:
            self._check_candidate_total(taken)
            # aiortc refuses such a candidate when it is added; an mDNS one is
            # added later, when no request could hear of it.
            if any(c is not None and c.sdpMid is None and c.sdpMLineIndex is None for c in fresh.values()):
                raise SignalingError("an ICE candidate needs an sdpMid or an sdpMLineIndex")
        except SignalingError as e:
            reply.set_exception(e)
            return
        await self._add_candidates(pc, fresh.values())
        self._remote_candidates = taken
        reply.set_result(None)

    async def _add_candidates(self, pc: RTCPeerConnection, candidates: Iterable[RTCIceCandidate | None]) -> None:
        # The resolver keeps what must wait for an mDNS name; aioice takes the
        # names already resolved from its table rather than asking the network.
        with mdns_answered_from(self._mdns.answers):
            for candidate in candidates:
                if self._mdns.take(candidate):
                    await pc.addIceCandidate(candidate)

    def _check_candidate_total(self, candidates: set[str]) -> None:
        if len(candidates) > self._settings.max_candidates_per_peer:
            raise SignalingError(
                f"more than {self._settings.max_candidates_per_peer} ICE candidates for one peer connection"
            )

    # ---- aiortc's events, and liveness ----

    async def _handle_pc_event(self, event: PcEvent) -> None:
        match event:
            case DataChannelMessage(message=message):
                bot_listening = self._session.bot_ready and self._reported_state == "connected"
                self._channel.receive(message, bot_listening)
            case ConnectionStateChanged(state=state):
                await self._handle_state(state)
            case DataChannelArrived(channel=channel):
                self._channel.arrived(channel)
            case DataChannelOpened():
                self._channel.opened()
            case DataChannelDeadline():
                self._channel.deadline_passed()
            case LivenessTick():
                pass  # only the checks below
        self._report_state()
        now = time.monotonic()
        if self._restart_deadline is not None and now > self._restart_deadline:
            await self._end(self._restart_reason, SessionOutcome.PEER_LEFT, tell_worker=True, notify_peer=False)
        elif self._disconnected_since is not None and now - self._disconnected_since > self._settings.peer_lost_close_s:
            await self._end("peer lost (no keepalive)", SessionOutcome.PEER_LOST, tell_worker=True, notify_peer=False)

    async def _handle_state(self, state: str) -> None:
        self.log.debug(f"peer {self.pc_id}: connection state {state}")
        if state not in ("new", "connecting"):
            self._cancel(self._connecting_timer)
            self._connecting_timer = None
        if state == "connected":
            self._start_bot()
            self._channel.start_deadline(self._session.pc)
        if state in ("failed", "closed"):
            # The client may restart it under the same pc_id (it does after an
            # ICE failure); the session waits a little for that before ending.
            self._restart_reason = f"peer connection {state}"
            self._restart_deadline = time.monotonic() + self._settings.restart_grace_s
            await self._close_pc()

    def _after(self, delay: float, reason: str, outcome: SessionOutcome) -> asyncio.Task:
        async def fire():
            await asyncio.sleep(delay)
            self.close(reason, outcome)

        return asyncio.create_task(fire())

    def _peer_state(self) -> PeerState:
        """The state the bot sees: aiortc's, but "disconnected" once keepalives stop or while a restart may come."""
        if self._ended:
            return "closed"
        if self._restart_deadline is not None:
            return "disconnected"
        pc = self._session.pc
        state = pc.connectionState if pc else "new"
        if state == "connected" and self._channel.keepalive_lapsed():
            return "disconnected"
        return state

    def _report_state(self) -> None:
        state = self._peer_state()
        if state == "disconnected":
            self._disconnected_since = self._disconnected_since or time.monotonic()
        else:
            self._disconnected_since = None
        if not self._session.bot_ready or state == self._reported_state:
            return
        self._reported_state = state
        self._session.to_worker(PeerStateChange(self.pc_id, state))
        if state == "connected":
            self._channel.release_held_app_messages()

    # ---- the worker's messages ----

    async def _handle_worker_message(self, message, payload: list) -> None:
        match message:
            case AudioOut(seq=seq):
                self._media.play_audio(seq, payload[0].bytes)
            case VideoOut(index=index, keyframe=keyframe):
                self._media.show_video(payload[0].bytes, index, keyframe)
            case AppMessageOut(json=text):
                self._channel.send(text)
            case SessionConnect():
                self._session.bot_ready = True
                self._media.bot_connected(peer_connected=self._peer_state() == "connected")
                self._report_state()
            case MediaCaptureSet():
                if self._media.set_capture(message):
                    self._channel.ask_to_renegotiate()
            case VideoInKeyframeRequest(source=source):
                self._media.ask_peer_for_keyframe(source)
            case AudioOutClear():
                self._media.clear_audio()
            case OutputOpen():
                self._media.open_outputs(message)
            case PeerRenegotiate():
                self._channel.ask_to_renegotiate()
            case SessionClose(reason=reason):
                await self._end(f"worker: {reason}", SessionOutcome.BOT_ENDED, tell_worker=False, notify_peer=True)

    # ---- the bot, and recovery ----

    def _start_bot(self) -> None:
        """Have the session's worker start its bot, the first time the peer connects."""
        if self.bot_started_at is None:
            self.bot_started_at = time.monotonic()
            self._session.to_worker(self.opening)
            self.log.info(f"peer {self.pc_id}: connected; bot starting on worker {self.worker.worker_id}")

    def _move_to(self, worker: WorkerHandle) -> None:
        """Hand the session to ``worker``; a bot already started starts afresh there, and connects as the first one did."""
        lost = self._session.worker
        self._media.stop_forwarding()
        self._session.hand_to(worker)
        self._reported_state = "new"
        self._media.new_bot()
        if self.bot_started_at is not None:
            self.bot_started_at = time.monotonic()
            worker.outbox.send(self.opening)
        self.log.info(f"peer {self.pc_id}: session moved from lost worker {lost.worker_id} to {worker.worker_id}")

    # ---- the end ----

    async def _close_pc(self) -> None:
        self._media.stop_forwarding()
        self._mdns.forget()
        pc, self._session.pc = self._session.pc, None
        self._channel.forget()
        if pc is not None:
            pc.remove_all_listeners()
            await pc.close()

    async def _end(self, reason: str, outcome: SessionOutcome, *, tell_worker: bool, notify_peer: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._metrics.sessions_total.labels(outcome).inc()
        self.log.info(f"peer {self.pc_id}: session ends ({reason})")
        if notify_peer:
            await self._channel.say_peer_left()
        self._cancel(self._connecting_timer)
        self._channel.stop_deadline()
        await self._close_pc()
        if tell_worker and self.bot_started_at is not None:
            self._session.to_worker(SessionClose(self.pc_id, reason))
        self.worker.sessions.discard(self.pc_id)
        # Anyone still waiting on a reply learns the session is gone.
        while (item := self.mailbox.get_nowait()) is not None:
            if isinstance(item, (Offer, Candidates)) and not item.reply.done():
                item.reply.set_exception(SignalingError(f"session {self.pc_id} has ended"))
        self._on_ended(self)

    @staticmethod
    def _cancel(task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()
