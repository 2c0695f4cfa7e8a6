"""One actor per WebRTC peer: it owns the aiortc peer connection and nothing else touches it.

Everything that concerns the peer arrives in its mailbox: HTTP signaling
(offers, candidates), aiortc's events (data channel messages, state changes),
and the worker's messages for the session (bot audio and video, app messages,
connect/close). The actor turns them into aiortc calls and into messages for
the worker that runs the session's bot.
"""

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription
from loguru import logger

from engine.common.mailbox import Mailbox
from engine.common.protocol import (
    AUDIO_QUEUE_FRAMES,
    AUDIO_TRANSCEIVER_INDEX,
    RECEIVER_BY_SOURCE,
    SCREEN_VIDEO_TRANSCEIVER_INDEX,
    SOURCE_BY_RECEIVER,
    VIDEO_QUEUE_FRAMES,
    VIDEO_TRANSCEIVER_INDEX,
    AppMessageIn,
    AppMessageOut,
    AudioIn,
    AudioOut,
    AudioOutAck,
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
    TrackStatusChange,
    VideoIn,
    VideoInKeyframeRequest,
    VideoOut,
    VideoOutBitrateSet,
    VideoOutCodecSet,
    VideoOutKeyframeRequest,
)
from engine.common.settings import HostSettings
from engine.metrics import HostMetrics, SessionOutcome
from engine.receivers import tap_encoded_frames
from engine.registry import WorkerHandle
from engine.tracks import EncodedAudioTrack, EncodedVideoTrack, forward_sender_feedback

# Packets a video receiver's jitter buffer holds, which bounds the frame it can
# assemble: aiortc's 128 (about 150 KB) for the camera; 512 (about 600 KB,
# libwebrtc's initial packet buffer) for the screen share, whose detailed
# keyframes are larger than 128 packets and would never decode (as Pipecat).
VIDEO_JITTER_BUFFER_CAPACITY = {VIDEO_TRANSCEIVER_INDEX: 128, SCREEN_VIDEO_TRANSCEIVER_INDEX: 512}
SIGNALLING_TYPE = "signalling"
# Messages for the peer held while its data channel is not open yet.
MAX_OUTGOING_QUEUE = 50
# App messages from the peer held until the bot is ready for them.
MAX_HELD_APP_MESSAGES = 100
# After the answer to a renegotiation we asked for, this long passes before we ask again.
RENEGOTIATION_GUARD_S = 2.0
# How often the actor re-evaluates liveness (ping window, lost peers).
LIVENESS_TICK_S = 0.5
# How long a resumed video receiver waits for the sender's first packet to ask it for a keyframe.
KEYFRAME_REQUEST_WAIT_S = 1.0
# How long a closing session waits for "peerLeft" to leave the data channel.
PEER_LEFT_FLUSH_S = 0.5


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
    """HTTP: trickled remote ICE candidates (None = end of candidates)."""

    candidates: list
    reply: asyncio.Future = field(repr=False)


class Close(NamedTuple):
    """Close the session: from a timer, the engine, or a lost worker."""

    reason: str
    outcome: SessionOutcome
    tell_worker: bool = True


class _PcEvent(NamedTuple):
    """aiortc reported something about one peer connection (maybe an old one)."""

    pc: RTCPeerConnection
    kind: str
    data: Any = None


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
    ):
        """Initialize the actor; ``run()`` must be started to serve it.

        Args:
            opening: What a worker is sent to run this session's bot; its
                ``session_id`` is the pc_id handed to the client.
            settings: Host settings (ICE servers, timers).
            worker: The worker that runs this session's bot.
            metrics: Where frames and outcomes are counted.
            on_ended: Called once when the session has ended.
        """
        pc_id = opening.session_id
        self.pc_id = pc_id
        self.opening = opening
        self._metrics = metrics
        self._answered_at: float | None = None
        self._first_media_seen = False
        self.worker = worker
        self.mailbox: Mailbox = Mailbox(f"peer {pc_id}")
        self._settings = settings
        self._on_ended = on_ended
        self._pc: RTCPeerConnection | None = None
        self._channel = None
        self._bot_ready = False
        self._reported_state: PeerState = "new"
        self._disconnected_since: float | None = None
        self._last_ping: float | None = None
        self._outgoing: list[str] = []
        self._queueing = True
        self._held_app_messages: deque[str] = deque(maxlen=MAX_HELD_APP_MESSAGES)
        self._enabled_sources = {index: True for index in SOURCE_BY_RECEIVER}
        # Which sources the bot captures.
        self._capture: dict[str, bool] = {}
        # Each video source's frames are numbered (engine.common.keyframes); a gap means "wait for a keyframe".
        self._frame_index = {index: 0 for index in SOURCE_BY_RECEIVER}
        self._bot_was_late = False
        self._keyframe_requests: set[asyncio.Task] = set()
        # Set while a closed or failed peer connection may still be restarted.
        self._restart_deadline: float | None = None
        self._restart_reason = ""
        self._output_request: OutputOpen | None = None
        self._audio_out: EncodedAudioTrack | None = None
        self._video_out: EncodedVideoTrack | None = None
        self._connecting_timer: asyncio.Task | None = None
        self._data_channel_timer: asyncio.Task | None = None
        # While a renegotiation we asked for is under way (until 2 s after its
        # answer), no other is asked for.
        self._renegotiating_until: float | None = None
        self._ended = False
        self.log = logger.bind(pc_id=pc_id, worker_id=worker.worker_id)

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
            self.mailbox.put(_MoveTo(worker))

    def close(self, reason: str, outcome: SessionOutcome, tell_worker: bool = True) -> None:
        """Ask the actor to end the session.

        Args:
            reason: Logged, and told to the worker.
            outcome: Why, as the metrics count it.
            tell_worker: Whether the worker still needs to hear of it.
        """
        if not self._ended:
            self.mailbox.put(Close(reason, outcome, tell_worker))

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
                    self.log.exception(f"peer {self.pc_id}: error handling {type(item).__name__}: {e}")
                    if isinstance(item, (Offer, Candidates)) and not item.reply.done():
                        item.reply.set_exception(SignalingError(str(e)))
        finally:
            ticker.cancel()
            await self._end("actor stopped", SessionOutcome.HOST_STOPPED, tell_worker=True, notify_peer=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_TICK_S)
            self.mailbox.put(_PcEvent(self._pc, "tick"))

    async def _handle(self, item) -> None:
        match item:
            case _WorkerMessage(message, payload):
                await self._handle_worker_message(message, payload)
            case _PcEvent(pc, kind, data):
                if pc is self._pc:
                    await self._handle_pc_event(kind, data)
            case Offer():
                await self._handle_offer(item)
            case Candidates(candidates, reply):
                # Candidates for a peer connection that died are for nothing.
                for candidate in candidates if self._pc is not None else []:
                    await self._pc.addIceCandidate(candidate)
                reply.set_result(None)
            case Close(reason, outcome, tell_worker):
                await self._end(reason, outcome, tell_worker=tell_worker, notify_peer=True)
            case _MoveTo(worker):
                self._move_to(worker)

    # ---- signaling ----

    def _new_pc(self) -> RTCPeerConnection:
        config = RTCConfiguration(
            iceServers=[server.to_rtc() for server in self._settings.ice_servers],
            # With aiortc's default policy the screen share's transceiver is
            # left off the bundled transport and its packets never arrive.
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )
        pc = RTCPeerConnection(config)
        post = self.mailbox.put

        @pc.on("datachannel")
        def on_datachannel(channel):
            post(_PcEvent(pc, "datachannel", channel))

            @channel.on("open")
            def on_open():
                post(_PcEvent(pc, "channel-open", channel))

            @channel.on("message")
            def on_message(message):
                post(_PcEvent(pc, "channel-message", message))

        @pc.on("connectionstatechange")
        def on_state():
            post(_PcEvent(pc, "state", pc.connectionState))

        self._pc = pc
        self._channel = None
        self._last_ping = None
        self._restart_deadline = None
        return pc

    async def _handle_offer(self, offer: Offer) -> None:
        if offer.type != "offer":
            raise SignalingError(f"expected an SDP of type 'offer', got {offer.type!r}")
        try:
            if not SessionDescription.parse(offer.sdp).media:
                raise ValueError("it has no media section")
        except Exception as e:
            raise SignalingError(f"invalid offer SDP: {e}") from e
        if self._pc is None:
            self._new_pc()
        elif offer.restart_pc:
            self.log.info(f"peer {self.pc_id}: restarting the peer connection")
            await self._close_pc()
            self._new_pc()
        pc = self._pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type=offer.type))
        except Exception as e:
            raise SignalingError(f"invalid offer SDP: {e}") from e
        # aiortc answers recvonly unless told otherwise: the bot sends on the
        # first two transceivers (audio, camera) and only receives the rest.
        for index, transceiver in enumerate(pc.getTransceivers()):
            transceiver.direction = "sendrecv" if index < 2 else "recvonly"
            # Before the answer is applied, which starts the receivers.
            tap_encoded_frames(transceiver.receiver, partial(self._hand_on, index))
            if index not in SOURCE_BY_RECEIVER:
                transceiver.receiver._enabled = False  # a source the contract does not have
        await pc.setLocalDescription(await pc.createAnswer())
        for index in SOURCE_BY_RECEIVER:
            self._apply_capture(index)
        self._attach_outputs()
        if self._renegotiating_until is not None:
            self._renegotiating_until = time.monotonic() + RENEGOTIATION_GUARD_S
        if self._answered_at is None:
            self._answered_at = time.monotonic()
        description = pc.localDescription
        offer.reply.set_result({"sdp": description.sdp, "type": description.type, "pc_id": self.pc_id})

    # ---- aiortc events ----

    async def _handle_pc_event(self, kind: str, data) -> None:
        if kind == "channel-message":
            self._handle_channel_message(data)
        elif kind == "state":
            await self._handle_state(data)
        elif kind == "datachannel":
            self._channel = data
            if data.readyState == "open":
                self._flush_outgoing()
        elif kind == "channel-open":
            self._flush_outgoing()
        elif kind == "data-channel-deadline" and (self._channel is None or self._channel.readyState != "open"):
            self.log.warning(
                f"peer {self.pc_id}: no data channel {self._settings.data_channel_timeout_s:g} s after connecting;"
                " dropping queued messages and queueing no more"
            )
            self._outgoing.clear()
            self._queueing = False
        self._report_state()
        now = time.monotonic()
        if self._restart_deadline is not None and now > self._restart_deadline:
            await self._end(self._restart_reason, SessionOutcome.PEER_LEFT, tell_worker=True, notify_peer=False)
        elif self._disconnected_since is not None and now - self._disconnected_since > self._settings.peer_lost_close_s:
            await self._end("peer lost (no keepalive)", SessionOutcome.PEER_LOST, tell_worker=True, notify_peer=False)

    async def _handle_state(self, state: str) -> None:
        self.log.debug(f"peer {self.pc_id}: connection state {state}")
        if state == "connecting" and self._connecting_timer is None:
            self._connecting_timer = self._after(
                self._settings.connecting_timeout_s, "no connection within the connecting timeout", SessionOutcome.CONNECT_TIMEOUT
            )
        elif state != "connecting":
            self._cancel(self._connecting_timer)
            self._connecting_timer = None
        if state == "connected" and self._data_channel_timer is None:
            self._data_channel_timer = asyncio.create_task(self._data_channel_deadline(self._pc))
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

    async def _data_channel_deadline(self, pc: RTCPeerConnection) -> None:
        await asyncio.sleep(self._settings.data_channel_timeout_s)
        self.mailbox.put(_PcEvent(pc, "data-channel-deadline"))

    def _handle_channel_message(self, message) -> None:
        # The keepalive is a plain string, not JSON.
        if isinstance(message, str) and message.startswith("ping"):
            self._last_ping = time.monotonic()
            return
        try:
            parsed = json.loads(message)
        except (TypeError, ValueError) as e:
            self.log.warning(f"peer {self.pc_id}: ignoring a data channel message that is not JSON: {e}")
            return
        if isinstance(parsed, dict) and parsed.get("type") == SIGNALLING_TYPE and parsed.get("message"):
            self._handle_signalling(parsed["message"])
        elif self._bot_ready and self._reported_state == "connected":
            self.worker.outbox.send(AppMessageIn(self.pc_id, message))
        else:
            if len(self._held_app_messages) == self._held_app_messages.maxlen:
                self.log.warning(f"peer {self.pc_id}: bot not ready, dropping the oldest held app message")
            self._held_app_messages.append(message)

    def _handle_signalling(self, message) -> None:
        if not isinstance(message, dict) or message.get("type") != "trackStatus":
            self.log.warning(f"peer {self.pc_id}: ignoring unknown signalling message {message!r}")
            return
        index, enabled = message.get("receiver_index"), message.get("enabled")
        if index not in SOURCE_BY_RECEIVER or not isinstance(enabled, bool):
            self.log.warning(f"peer {self.pc_id}: ignoring malformed trackStatus {message!r}")
            return
        self._enabled_sources[index] = enabled
        self._apply_capture(index)
        self.worker.outbox.send(TrackStatusChange(self.pc_id, index, enabled))

    def _peer_state(self) -> PeerState:
        """The state the bot sees: aiortc's, but "disconnected" once keepalives stop or while a restart may come."""
        if self._ended:
            return "closed"
        if self._restart_deadline is not None:
            return "disconnected"
        state = self._pc.connectionState if self._pc else "new"
        if (
            state == "connected"
            and self._last_ping is not None
            and time.monotonic() - self._last_ping > self._settings.ping_window_s
        ):
            return "disconnected"
        return state

    def _report_state(self) -> None:
        state = self._peer_state()
        if state == "disconnected":
            self._disconnected_since = self._disconnected_since or time.monotonic()
        else:
            self._disconnected_since = None
        if not self._bot_ready or state == self._reported_state:
            return
        self._reported_state = state
        self.worker.outbox.send(PeerStateChange(self.pc_id, state))
        if state == "connected":
            while self._held_app_messages:
                self.worker.outbox.send(AppMessageIn(self.pc_id, self._held_app_messages.popleft()))

    # ---- messages to the peer ----

    def _send_to_peer(self, text: str) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(text)
        elif self._queueing and len(self._outgoing) < MAX_OUTGOING_QUEUE:
            self._outgoing.append(text)
        elif self._queueing:
            self.log.warning(f"peer {self.pc_id}: {MAX_OUTGOING_QUEUE} messages wait for the data channel, dropping one")

    def _flush_outgoing(self) -> None:
        self._cancel(self._data_channel_timer)
        while self._outgoing and self._channel is not None:
            self._channel.send(self._outgoing.pop(0))

    def _send_signalling(self, message: dict) -> None:
        self._send_to_peer(json.dumps({"type": SIGNALLING_TYPE, "message": message}))

    # ---- the worker's messages ----

    async def _handle_worker_message(self, message, payload: list) -> None:
        match message:
            case AudioOut(seq=seq):
                self._bot_media_out(self._metrics.audio_out)
                if self._audio_out is None:
                    self.worker.outbox.send(AudioOutAck(self.pc_id, seq))
                else:
                    done = self._audio_out.add_packet(payload[0].bytes)
                    done.add_done_callback(lambda _: self.worker.outbox.send(AudioOutAck(self.pc_id, seq)))
            case VideoOut(index=index, keyframe=keyframe) if self._video_out is not None:
                self._bot_media_out(self._metrics.video_out)
                dropped = self._video_out.dropped_frames
                self._video_out.add_encoded_frame(payload[0].bytes, index, keyframe)
                if self._video_out.dropped_frames > dropped:
                    self._metrics.frames_dropped.labels("video", "output_track").inc(self._video_out.dropped_frames - dropped)
            case AppMessageOut(json=text):
                self._send_to_peer(text)
            case SessionConnect():
                self._bot_ready = True
                self._bot_was_late = self._peer_state() == "connected"
                self._report_state()
            case MediaCaptureSet():
                self._set_capture(message)
            case VideoInKeyframeRequest(source=source):
                index = RECEIVER_BY_SOURCE.get(source)
                if index is not None and self._wanted(index):
                    self._ask_peer_for_keyframe(index)
            case AudioOutClear() if self._audio_out is not None:
                self._audio_out.clear()
            case OutputOpen():
                self._open_outputs(message)
            case PeerRenegotiate():
                self._ask_to_renegotiate()
            case SessionClose(reason=reason):
                await self._end(f"worker: {reason}", SessionOutcome.BOT_ENDED, tell_worker=False, notify_peer=True)
            case VideoOut():
                pass  # the bot sent video before asking for an output track

    def _bot_media_out(self, counter) -> None:
        counter.inc()
        if not self._first_media_seen and self._answered_at is not None:
            self._first_media_seen = True
            self._metrics.first_media.observe(time.monotonic() - self._answered_at)

    def _ask_to_renegotiate(self) -> None:
        if self._renegotiating_until is not None and time.monotonic() < self._renegotiating_until:
            return
        self._renegotiating_until = float("inf")
        self._send_signalling({"type": "renegotiate"})

    def _open_outputs(self, request: OutputOpen) -> None:
        self._output_request = request
        self._attach_outputs()

    def _attach_outputs(self) -> None:
        """Give the current peer connection the bot's output tracks.

        aiortc stops a sender's track with its peer connection, so a restarted
        connection gets fresh tracks; the old audio's waiters are released.
        """
        request = self._output_request
        if self._pc is None or request is None:
            return
        if self._audio_out is not None and self._audio_out.readyState != "live":
            self._audio_out.clear()
            self._audio_out = None
        if self._video_out is not None and self._video_out.readyState != "live":
            self._video_out = None
        transceivers = self._pc.getTransceivers()
        if self._audio_out is None and request.audio and self._sends_opus(transceivers):
            self._audio_out = EncodedAudioTrack(request.audio_auto_silence)
        if self._video_out is None and request.video:
            self._video_out = EncodedVideoTrack(self._request_bot_keyframe, VIDEO_QUEUE_FRAMES)
        for index, track in ((AUDIO_TRANSCEIVER_INDEX, self._audio_out), (VIDEO_TRANSCEIVER_INDEX, self._video_out)):
            if track is not None and len(transceivers) > index and transceivers[index].sender.track is not track:
                if index == VIDEO_TRANSCEIVER_INDEX:
                    self._hand_feedback_to_bot(transceivers[index])
                transceivers[index].sender.replaceTrack(track)
        if self._video_out is not None and len(transceivers) > VIDEO_TRANSCEIVER_INDEX:
            # Every worker that opens outputs, and every new negotiation, learns the codec.
            codecs = transceivers[VIDEO_TRANSCEIVER_INDEX]._codecs
            if codecs:
                self.worker.outbox.send(VideoOutCodecSet(self.pc_id, codecs[0].mimeType))

    def _sends_opus(self, transceivers) -> bool:
        # The worker encodes bot audio as Opus, which every browser offers first.
        if len(transceivers) <= AUDIO_TRANSCEIVER_INDEX:
            return False
        codecs = transceivers[AUDIO_TRANSCEIVER_INDEX]._codecs
        if codecs and codecs[0].mimeType.lower() == "audio/opus":
            return True
        self.log.warning(f"peer {self.pc_id}: the peer did not negotiate Opus; the bot's audio is not sent")
        return False

    def _hand_feedback_to_bot(self, transceiver) -> None:
        """Have the peer's keyframe requests and bandwidth estimates for the bot's video reach its encoder."""
        # aiortc sends with the first negotiated codec (private, but it is what its sender uses).
        codecs = transceiver._codecs
        if not codecs:
            return
        forward_sender_feedback(
            transceiver.sender,
            codecs[0],
            self._request_bot_keyframe,
            lambda bitrate: self.worker.outbox.send(VideoOutBitrateSet(self.pc_id, bitrate)),
        )

    def _request_bot_keyframe(self) -> None:
        self.worker.outbox.send(VideoOutKeyframeRequest(self.pc_id))

    # ---- reading the peer's media ----

    def _wanted(self, index: int) -> bool:
        """Whether the bot wants this source now (captured, and not muted if it is video)."""
        if not self._capture.get(SOURCE_BY_RECEIVER[index], False):
            return False
        return index == AUDIO_TRANSCEIVER_INDEX or self._enabled_sources[index]

    def _apply_capture(self, index: int) -> None:
        transceivers = self._pc.getTransceivers() if self._pc else []
        if index >= len(transceivers):
            return
        receiver = transceivers[index].receiver
        wanted = self._wanted(index)
        if wanted and not receiver._enabled and index != AUDIO_TRANSCEIVER_INDEX:
            # Resuming mid-stream: aiortc's jitter buffer still holds the
            # packets from before the pause and would wait forever for the gap
            # to fill, and nothing decodes before the next keyframe.
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                capacity=VIDEO_JITTER_BUFFER_CAPACITY[index], is_video=True
            )
            # The stream resumes mid-way: a gap, so the worker waits for a keyframe.
            self._frame_index[index] += 1
            self._ask_peer_for_keyframe(index)
        # aiortc neither decodes nor queues for a disabled receiver: a source
        # the bot does not read costs nothing and never piles up.
        receiver._enabled = wanted

    def _ask_peer_for_keyframe(self, index: int) -> None:
        transceivers = self._pc.getTransceivers() if self._pc else []
        if index >= len(transceivers):
            return
        receiver = transceivers[index].receiver
        task = asyncio.create_task(self._request_keyframe(receiver))
        self._keyframe_requests.add(task)
        task.add_done_callback(self._keyframe_requests.discard)

    async def _request_keyframe(self, receiver) -> None:
        """Ask the sender for a keyframe: video resumed mid-stream decodes nothing until one comes."""
        deadline = time.monotonic() + KEYFRAME_REQUEST_WAIT_S
        # The sender's SSRC is known once one of its packets has arrived.
        while not (sources := receiver.getSynchronizationSources()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for source in sources:
            await receiver._send_rtcp_pli(source.source)

    def _set_capture(self, request: MediaCaptureSet) -> None:
        index = RECEIVER_BY_SOURCE.get(request.source)
        if index is None:
            self.log.warning(f"peer {self.pc_id}: the bot asked for an unknown source {request.source!r}")
            return
        starting = not self._wanted(index)
        self._capture[request.source] = request.enabled
        if self._pc is not None:
            self._apply_capture(index)
        if starting and index != AUDIO_TRANSCEIVER_INDEX and self._wanted(index) and self._bot_was_late:
            # The peer connected before the bot: ask for a new offer so a fresh
            # keyframe comes now rather than at the sender's next scheduled one.
            self._bot_was_late = False
            self._ask_to_renegotiate()

    def _hand_on(self, index: int, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        """Send a complete encoded frame of the peer's to the worker, if its bot is there to read it."""
        # A disabled receiver assembles nothing: every frame here is one the bot captures.
        source = SOURCE_BY_RECEIVER.get(index)
        if source is None:
            return
        lane = MediaLane(self.pc_id, source.kind, source)
        if index == AUDIO_TRANSCEIVER_INDEX:
            if self._bot_ready:
                message = AudioIn(self.pc_id, codec.mimeType, frame.timestamp)
                self.worker.outbox.send_bounded(lane, AUDIO_QUEUE_FRAMES, message, frame.data)
                self._metrics.audio_in.inc()
            return
        self._frame_index[index] += 1
        if self._bot_ready:
            message = VideoIn(self.pc_id, source, codec.mimeType, self._frame_index[index], frame.timestamp)
            self.worker.outbox.send_bounded(lane, VIDEO_QUEUE_FRAMES, message, frame.data)
            self._metrics.video_in.inc()

    def _stop_forwarding(self) -> None:
        for task in self._keyframe_requests:
            task.cancel()
        self._keyframe_requests.clear()
        self.worker.outbox.forget_session(self.pc_id)

    # ---- recovery ----

    def _move_to(self, worker: WorkerHandle) -> None:
        """Start a fresh bot on ``worker``; it connects as the first one did."""
        lost = self.worker
        self._stop_forwarding()
        self.worker = worker
        self.log = logger.bind(pc_id=self.pc_id, worker_id=worker.worker_id)
        self._bot_ready = False
        self._reported_state = "new"
        self._capture = {}
        self._bot_was_late = False
        if self._audio_out is not None:
            # Audio the lost bot queued is not the new bot's to finish.
            self._audio_out.clear()
        for index in SOURCE_BY_RECEIVER:
            self._apply_capture(index)
        worker.outbox.send(self.opening)
        self.log.info(f"peer {self.pc_id}: session moved from lost worker {lost.worker_id} to {worker.worker_id}")

    # ---- the end ----

    async def _close_pc(self) -> None:
        self._stop_forwarding()
        pc, self._pc = self._pc, None
        self._channel = None
        if pc is not None:
            pc.remove_all_listeners()
            await pc.close()

    async def _end(self, reason: str, outcome: SessionOutcome, *, tell_worker: bool, notify_peer: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._metrics.sessions_total.labels(outcome).inc()
        self.log.info(f"peer {self.pc_id}: session ends ({reason})")
        if notify_peer and self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps({"type": SIGNALLING_TYPE, "message": {"type": "peerLeft"}}))
            # Closing aborts the SCTP association and what it has not sent yet.
            deadline = time.monotonic() + PEER_LEFT_FLUSH_S
            while self._channel.bufferedAmount > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        self._cancel(self._connecting_timer)
        self._cancel(self._data_channel_timer)
        await self._close_pc()
        if tell_worker:
            self.worker.outbox.send(SessionClose(self.pc_id, reason))
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
