"""The peer's media to the bot and the bot's media to the peer, on the session's current peer connection.

Peer to bot: the receivers of the sources the bot captures are enabled, the
others take nothing in; each complete encoded frame goes on to the worker's
outbox, video frames numbered so a gap shows; and the peer is asked for a
keyframe when a video source resumes or the worker cannot decode it. Until
its bot has had time to capture them, video sources are received anyway and
their frames since the last keyframe kept (``Backlog``): a bot that captures
one starts from the picture the peer sent last, instead of waiting for the
peer to answer a keyframe request (or, as Pipecat's transport does for a bot
that connected after its peer, a new offer).

Bot to peer: the bot's output tracks (already encoded by the worker) on the
first two transceivers, the negotiated video codec told to the worker, and
the peer's keyframe requests and bandwidth estimates handed on to the bot's
encoder.
"""

import asyncio
import time
import weakref
from functools import partial

from aiortc import RTCRtpReceiver, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client import Counter

from engine.aiortc_seam import (
    enable_receiver,
    forward_sender_feedback,
    negotiated_codecs,
    prefer_codecs,
    receiver_enabled,
    reset_video_jitter_buffer,
    send_picture_loss_indication,
    tap_encoded_frames,
)
from engine.common.keyframes import is_keyframe
from engine.common.protocol import (
    AUDIO_OUT_ACK_EVERY,
    AUDIO_QUEUE_FRAMES,
    AUDIO_TRANSCEIVER_INDEX,
    RECEIVER_BY_SOURCE,
    SCREEN_VIDEO_TRANSCEIVER_INDEX,
    SOURCE_BY_RECEIVER,
    VIDEO_QUEUE_FRAMES,
    VIDEO_TRANSCEIVER_INDEX,
    AudioIn,
    AudioOutAck,
    MediaCaptureSet,
    MediaLane,
    MediaSource,
    OutputOpen,
    VideoIn,
    VideoInBacklog,
    VideoOutBitrateSet,
    VideoOutCodecSet,
    VideoOutKeyframeRequest,
)
from engine.common.settings import HostSettings
from engine.metrics import HostMetrics
from engine.peer.session import PeerSession
from engine.tracks import EncodedAudioTrack, EncodedVideoTrack

# Packets a video receiver's jitter buffer holds, which bounds the frame it can
# assemble and how long a packet lost for good holds up the frames behind it
# (the buffer gives up on it only once it is full): 128 (about 150 KB) for the
# camera, where aiortc's 512 held a lossy path's video up for seconds; 512
# (about 600 KB, libwebrtc's initial packet buffer) for the screen share, whose
# detailed keyframes are larger than 128 packets and would never decode.
VIDEO_JITTER_BUFFER_CAPACITY = {VIDEO_TRANSCEIVER_INDEX: 128, SCREEN_VIDEO_TRANSCEIVER_INDEX: 512}
# How long a resumed video receiver waits for the sender's first packet to ask it for a keyframe.
KEYFRAME_REQUEST_WAIT_S = 1.0
# How long after its bot is ready a video source the bot has not captured is still received and
# kept (a bot captures as it connects); then its receiver stops, as for any source not captured.
BACKLOG_AFTER_BOT_READY_S = 2.0
# The most of a source a backlog keeps (3 s at 30 fps; a few detailed screen keyframes); past
# either, it is dropped and waits for the next keyframe.
BACKLOG_MAX_FRAMES = 90
BACKLOG_MAX_BYTES = 2_000_000


class Backlog:
    """A video source's frames from its last keyframe on, numbered, bounded; empty until a keyframe comes."""

    def __init__(self):
        """Initialize an empty backlog."""
        self.mime_type = ""
        self.first_index = 0
        self.frames: list[tuple[int, bytes]] = []  # (pts, bitstream)
        self._size = 0

    def keep(self, mime_type: str, index: int, pts: int, data: bytes) -> None:
        """Keep frame ``index`` if it is a keyframe or continues the frames kept; otherwise start over."""
        if is_keyframe(mime_type, data):
            self.mime_type, self.first_index, self.frames, self._size = mime_type, index, [], 0
        elif not self.frames or index != self.first_index + len(self.frames) or mime_type != self.mime_type:
            self.frames, self._size = [], 0
            return
        self.frames.append((pts, data))
        self._size += len(data)
        if len(self.frames) > BACKLOG_MAX_FRAMES or self._size > BACKLOG_MAX_BYTES:
            self.frames, self._size = [], 0


class PeerMedia:
    """What the bot captures of the peer, and the bot's output tracks to it."""

    def __init__(self, session: PeerSession, metrics: HostMetrics, settings: HostSettings):
        """Initialize the part; it acts on the session's peer connection once one is negotiated.

        Args:
            session: The session it serves.
            metrics: Where frames are counted.
            settings: The host's settings (the bot video's codec preference and encoder settings).
        """
        self._session = session
        self._metrics = metrics
        self._video_codec_preference = [f"video/{name}" for name in settings.video_codec_preference]
        self._video_encoder = settings.video_encoder
        # Which sources the peer sends (``trackStatus``) and which the bot captures.
        self._enabled_sources = {index: True for index in SOURCE_BY_RECEIVER}
        self._capture: dict[str, bool] = {}
        # Each video source's frames are numbered (engine.common.keyframes); a gap means "wait for a keyframe".
        self._frame_index = {index: 0 for index in SOURCE_BY_RECEIVER}
        # The video receivers whose frames go to the worker, and the backlogs of the others.
        self._forwarding: set[int] = set()
        self._backlogs: dict[int, Backlog] = {}
        self._keeping_backlogs = True
        self._backlogs_end: asyncio.TimerHandle | None = None
        self._sized_receivers: weakref.WeakSet[RTCRtpReceiver] = weakref.WeakSet()
        self._bot_was_late = False
        self._keyframe_requests: set[asyncio.Task] = set()
        self._output_request: OutputOpen | None = None
        self._audio_out: EncodedAudioTrack | None = None
        self._video_out: EncodedVideoTrack | None = None
        self._answered_at: float | None = None
        self._first_media_seen = False

    # ---- negotiation ----

    def prepare(self, transceivers: list[RTCRtpTransceiver]) -> None:
        """Set up the transceivers of an offer before it is answered (the answer starts the receivers)."""
        # aiortc answers recvonly unless told otherwise: the bot sends on the
        # first two transceivers (audio, camera) and only receives the rest.
        for index, transceiver in enumerate(transceivers):
            transceiver.direction = "sendrecv" if index < 2 else "recvonly"
            tap_encoded_frames(transceiver.receiver, partial(self._hand_on, index))
            if index not in SOURCE_BY_RECEIVER:
                enable_receiver(transceiver.receiver, False)  # a source the contract does not have
            elif index in VIDEO_JITTER_BUFFER_CAPACITY and transceiver.receiver not in self._sized_receivers:
                # Before its first packet (a video source is received from the start, for its backlog).
                reset_video_jitter_buffer(transceiver.receiver, VIDEO_JITTER_BUFFER_CAPACITY[index])
                self._sized_receivers.add(transceiver.receiver)
            if index == VIDEO_TRANSCEIVER_INDEX:
                # The bot's video is sent in the first codec of the answer; the peer's camera, usually, too.
                prefer_codecs(transceiver, self._video_codec_preference)

    def answered(self) -> None:
        """Apply what the bot captures and sends to the connection just answered."""
        for index in SOURCE_BY_RECEIVER:
            self._apply_capture(index)
        self._attach_outputs()
        if self._answered_at is None:
            self._answered_at = time.monotonic()

    # ---- the peer's media, to the bot ----

    def bot_connected(self, peer_connected: bool) -> None:
        """The bot is ready (``SessionConnect``); ``peer_connected``: the peer was first.

        The sources it does not capture within ``BACKLOG_AFTER_BOT_READY_S`` stop being received.
        """
        self._bot_was_late = peer_connected
        if self._backlogs_end is not None:
            self._backlogs_end.cancel()
        self._backlogs_end = asyncio.get_running_loop().call_later(BACKLOG_AFTER_BOT_READY_S, self._stop_keeping_backlogs)

    def set_capture(self, request: MediaCaptureSet) -> bool:
        """Start or stop forwarding one of the peer's sources to the bot.

        Returns:
            Whether to ask the peer for a new offer: the bot starts a video
            source of a peer that connected before it, there is no backlog
            to start it from, and the next scheduled keyframe may be far.
        """
        index = RECEIVER_BY_SOURCE.get(request.source)
        if index is None:
            self._session.log.warning(f"peer {self._session.pc_id}: the bot asked for an unknown source {request.source!r}")
            return False
        starting = not self._wanted(index)
        self._capture[request.source] = request.enabled
        from_backlog = self._apply_capture(index)
        if starting and index != AUDIO_TRANSCEIVER_INDEX and self._wanted(index) and self._bot_was_late:
            self._bot_was_late = False
            return not from_backlog
        return False

    def set_source_enabled(self, index: int, enabled: bool) -> None:
        """The peer turned the source of receiver ``index`` on or off (``trackStatus``)."""
        self._enabled_sources[index] = enabled
        self._apply_capture(index)

    def ask_peer_for_keyframe(self, source: MediaSource) -> None:
        """Ask the peer for a keyframe of ``source`` if the bot reads it (the worker cannot decode it)."""
        index = RECEIVER_BY_SOURCE.get(source)
        if index is not None and self._wanted(index):
            self._ask_peer_for_keyframe(index)

    def new_bot(self) -> None:
        """A fresh bot takes the session over: it captures nothing yet, and the lost bot's audio is not its to finish."""
        self._capture = {}
        self._bot_was_late = False
        self._forwarding.clear()
        # Its sources are kept for it until it has had its own time to capture them.
        self._keeping_backlogs = True
        if self._backlogs_end is not None:
            self._backlogs_end.cancel()
            self._backlogs_end = None
        if self._audio_out is not None:
            self._audio_out.clear()
        for index in SOURCE_BY_RECEIVER:
            self._apply_capture(index)

    def stop_forwarding(self) -> None:
        """Forget the frames on their way to the worker and the keyframe requests under way (connection or worker gone)."""
        for task in self._keyframe_requests:
            task.cancel()
        self._keyframe_requests.clear()
        if self._backlogs_end is not None:
            self._backlogs_end.cancel()
        self._backlogs.clear()
        self._session.worker.outbox.forget_session(self._session.pc_id)

    def _wanted(self, index: int) -> bool:
        """Whether the bot wants this source now (captured, and not muted if it is video)."""
        if not self._capture.get(SOURCE_BY_RECEIVER[index], False):
            return False
        return index == AUDIO_TRANSCEIVER_INDEX or self._enabled_sources[index]

    def _receiving(self, index: int) -> bool:
        """Whether the receiver takes packets in: the bot wants the source, or it is video still kept in a backlog."""
        if self._wanted(index):
            return True
        return index != AUDIO_TRANSCEIVER_INDEX and self._keeping_backlogs and self._enabled_sources[index]

    def _receiver(self, index: int) -> RTCRtpReceiver | None:
        pc = self._session.pc
        transceivers = pc.getTransceivers() if pc else []
        return transceivers[index].receiver if index < len(transceivers) else None

    def _apply_capture(self, index: int) -> bool:
        """Enable the receiver as the bot's capture and the peer's source say; True if a video source started from its backlog."""
        receiver = self._receiver(index)
        if receiver is None:
            return False
        wanted = self._wanted(index)
        from_backlog = False
        if index != AUDIO_TRANSCEIVER_INDEX:
            if wanted and index not in self._forwarding:
                self._forwarding.add(index)
                from_backlog = receiver_enabled(receiver) and self._send_backlog(index)
                if not from_backlog:
                    if not receiver_enabled(receiver):
                        # Resuming mid-stream: the jitter buffer still holds the packets
                        # from before the pause, and nothing decodes before the next keyframe.
                        reset_video_jitter_buffer(receiver, VIDEO_JITTER_BUFFER_CAPACITY[index])
                    # The stream starts mid-way: a gap, so the worker waits for a keyframe.
                    self._frame_index[index] += 1
                    self._ask_peer_for_keyframe(index)
            elif not wanted:
                self._forwarding.discard(index)
            if wanted or not self._receiving(index):
                self._backlogs.pop(index, None)
        enable_receiver(receiver, self._receiving(index))
        return from_backlog

    def _send_backlog(self, index: int) -> bool:
        """Send the worker a source's backlog, if it has one; its live frames follow."""
        backlog = self._backlogs.pop(index, None)
        if backlog is None or not backlog.frames or not self._session.bot_ready:
            return False
        session = self._session
        source = SOURCE_BY_RECEIVER[index]
        pts, data = zip(*backlog.frames)
        message = VideoInBacklog(session.pc_id, source, backlog.mime_type, backlog.first_index, pts)
        session.worker.outbox.send_bounded(
            MediaLane(session.pc_id, source.kind, source), VIDEO_QUEUE_FRAMES, message, *data
        )
        self._metrics.video_in.inc(len(data))
        return True

    def _stop_keeping_backlogs(self) -> None:
        """The bot has had its time to capture: sources it does not capture stop being received."""
        self._backlogs_end = None
        self._keeping_backlogs = False
        self._backlogs.clear()
        for index in SOURCE_BY_RECEIVER:
            self._apply_capture(index)

    def _ask_peer_for_keyframe(self, index: int) -> None:
        receiver = self._receiver(index)
        if receiver is None:
            return
        task = asyncio.create_task(self._request_keyframe(receiver))
        self._keyframe_requests.add(task)
        task.add_done_callback(self._keyframe_requests.discard)

    async def _request_keyframe(self, receiver: RTCRtpReceiver) -> None:
        """Ask the sender for a keyframe: video resumed mid-stream decodes nothing until one comes."""
        deadline = time.monotonic() + KEYFRAME_REQUEST_WAIT_S
        # The sender's SSRC is known once one of its packets has arrived.
        while not (sources := receiver.getSynchronizationSources()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for source in sources:
            await send_picture_loss_indication(receiver, source.source)

    def _hand_on(self, index: int, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        """Send a complete encoded frame of the peer's to the worker, if its bot is there to read it, or keep it in the source's backlog."""
        # A disabled receiver assembles nothing: every frame here is one the bot captures, or video kept for it.
        source = SOURCE_BY_RECEIVER.get(index)
        if source is None:
            return
        session = self._session
        lane = MediaLane(session.pc_id, source.kind, source)
        if index == AUDIO_TRANSCEIVER_INDEX:
            if session.bot_ready:
                message = AudioIn(session.pc_id, codec.mimeType, frame.timestamp)
                session.worker.outbox.send_bounded(lane, AUDIO_QUEUE_FRAMES, message, frame.data)
                self._metrics.audio_in.inc()
            return
        self._frame_index[index] += 1
        if index not in self._forwarding:
            self._backlogs.setdefault(index, Backlog()).keep(codec.mimeType, self._frame_index[index], frame.timestamp, frame.data)
        elif session.bot_ready:
            message = VideoIn(session.pc_id, source, codec.mimeType, self._frame_index[index], frame.timestamp)
            session.worker.outbox.send_bounded(lane, VIDEO_QUEUE_FRAMES, message, frame.data)
            self._metrics.video_in.inc()

    # ---- the bot's media, to the peer ----

    def open_outputs(self, request: OutputOpen) -> None:
        """Give the peer the bot's output tracks (``OutputOpen``), now and after every negotiation."""
        self._output_request = request
        self._attach_outputs()

    def play_audio(self, seq: int, packet: bytes) -> None:
        """Queue a packet of bot audio; the worker hears it was taken (``AudioOutAck``) as the protocol says."""
        self._count_bot_media(self._metrics.audio_out)
        if self._audio_out is None:
            self._session.to_worker(AudioOutAck(self._session.pc_id, seq))
            return
        track = self._audio_out
        done = track.add_packet(packet)
        done.add_done_callback(lambda _: self._acknowledge_audio(track, seq))

    def _acknowledge_audio(self, track: EncodedAudioTrack, seq: int) -> None:
        if seq % AUDIO_OUT_ACK_EVERY == 0 or not track.queued_frames:
            self._session.to_worker(AudioOutAck(self._session.pc_id, seq))

    def clear_audio(self) -> None:
        """Drop the bot audio not sent yet (the bot was interrupted)."""
        if self._audio_out is not None:
            self._audio_out.clear()

    def show_video(self, frame: bytes, index: int, keyframe: bool) -> None:
        """Queue an encoded frame of bot video; a frame before the output track is opened is dropped."""
        if self._video_out is None:
            return
        self._count_bot_media(self._metrics.video_out)
        dropped = self._video_out.dropped_frames
        self._video_out.add_encoded_frame(frame, index, keyframe)
        if self._video_out.dropped_frames > dropped:
            self._metrics.frames_dropped.labels("video", "output_track").inc(self._video_out.dropped_frames - dropped)

    def _count_bot_media(self, counter: Counter) -> None:
        counter.inc()
        if not self._first_media_seen and self._answered_at is not None:
            self._first_media_seen = True
            self._metrics.first_media.observe(time.monotonic() - self._answered_at)

    def _attach_outputs(self) -> None:
        """Give the current peer connection the bot's output tracks.

        aiortc stops a sender's track with its peer connection, so a restarted
        connection gets fresh tracks; the old audio's waiters are released.
        """
        request = self._output_request
        pc = self._session.pc
        if pc is None or request is None:
            return
        if self._audio_out is not None and self._audio_out.readyState != "live":
            self._audio_out.clear()
            self._audio_out = None
        if self._video_out is not None and self._video_out.readyState != "live":
            self._video_out = None
        transceivers = pc.getTransceivers()
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
            codecs = negotiated_codecs(transceivers[VIDEO_TRANSCEIVER_INDEX])
            if codecs:
                message = VideoOutCodecSet(self._session.pc_id, codecs[0].mimeType, self._video_encoder)
                self._session.to_worker(message)

    def _sends_opus(self, transceivers: list[RTCRtpTransceiver]) -> bool:
        # The worker encodes bot audio as Opus, which every browser offers first.
        if len(transceivers) <= AUDIO_TRANSCEIVER_INDEX:
            return False
        codecs = negotiated_codecs(transceivers[AUDIO_TRANSCEIVER_INDEX])
        if codecs and codecs[0].mimeType.lower() == "audio/opus":
            return True
        self._session.log.warning(f"peer {self._session.pc_id}: the peer did not negotiate Opus; the bot's audio is not sent")
        return False

    def _hand_feedback_to_bot(self, transceiver: RTCRtpTransceiver) -> None:
        """Have the peer's keyframe requests and bandwidth estimates for the bot's video reach its encoder."""
        # aiortc sends with the first negotiated codec.
        codecs = negotiated_codecs(transceiver)
        if not codecs:
            return
        forward_sender_feedback(
            transceiver.sender,
            codecs[0],
            self._request_bot_keyframe,
            lambda bitrate: self._session.to_worker(VideoOutBitrateSet(self._session.pc_id, bitrate)),
        )

    def _request_bot_keyframe(self) -> None:
        self._session.to_worker(VideoOutKeyframeRequest(self._session.pc_id))
