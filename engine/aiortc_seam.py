"""Every reach of the engine into aiortc's private state, each in one small function that says why.

aiortc decodes what it receives and encodes what it sends; the engine does
neither (the workers do), and it drives receivers the bot does not read. Its
public API has no way to say so, so these functions reach into its receivers,
senders and transceivers. aioice resolves a peer's mDNS candidates where
aiortc waits for them, so the engine resolves them itself, with aioice's
mDNS protocol, and hands aioice the answers. Nothing else in the engine
touches a private member of aiortc or aioice: ``tests/engine/test_aiortc_seam.py``
checks that every member used here still exists on the versions installed,
and fails naming it.
"""

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar

import aioice.ice
import aiortc.rtcsctptransport
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import get_encoder, is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from loguru import logger

from engine.common.protocol import bitrate_changed

OnEncodedFrame = Callable[[RTCRtpCodecParameters, JitterFrame], None]

# ---- receivers ----


class _EncodedFrameTap:
    """What a tapped receiver takes for its decoder queue."""

    def __init__(self, on_frame: OnEncodedFrame):
        self._on_frame = on_frame
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        # The receiver, on the event loop: a complete frame, or None when it stops.
        if item is None:
            self._stopped.set()
            return
        try:
            self._on_frame(*item)
        except Exception:
            # Never into aiortc's packet handling: that would stop the receiver.
            logger.exception("dropping a peer frame the engine could not hand on")

    def get(self) -> None:
        # The receiver's decoder thread, which has nothing to decode: None ends it.
        self._stopped.wait()
        return None


def tap_encoded_frames(receiver: RTCRtpReceiver, on_frame: OnEncodedFrame) -> None:
    """Have ``receiver`` hand its complete encoded frames to ``on_frame`` instead of decoding them.

    aiortc's receiver reassembles each frame in its jitter buffer and puts
    ``(codec, frame)`` on a queue that its decoder thread reads. The engine
    decodes nothing, so the tap stands in that queue: each complete frame goes
    to ``on_frame`` on the event loop as soon as it is assembled, and the
    decoder thread only waits for the receiver to stop (its ``None`` still
    ends the receiver's track).

    Call it before the receiver starts (before the answer is applied); a
    receiver already tapped keeps its tap.

    Raises:
        RuntimeError: If the receiver's decoder thread already reads its own queue.
    """
    if isinstance(receiver._RTCRtpReceiver__decoder_queue, _EncodedFrameTap):
        return
    if receiver._RTCRtpReceiver__decoder_thread is not None:
        raise RuntimeError("the receiver has started: its frames can no longer be tapped")
    receiver._RTCRtpReceiver__decoder_queue = _EncodedFrameTap(on_frame)


def receiver_enabled(receiver: RTCRtpReceiver) -> bool:
    """Whether ``receiver`` takes its packets in (see ``enable_receiver``)."""
    return receiver._enabled


def enable_receiver(receiver: RTCRtpReceiver, enabled: bool) -> None:
    """Have ``receiver`` take its packets in, or drop them on arrival.

    A disabled aiortc receiver neither reassembles nor queues anything, so a
    source the bot does not read costs nothing and never piles up; aiortc only
    offers this flag, not an API.
    """
    receiver._enabled = enabled


def reset_video_jitter_buffer(receiver: RTCRtpReceiver, capacity: int) -> None:
    """Give a video receiver an empty jitter buffer of ``capacity`` packets.

    A receiver resumed mid-stream still holds the packets from before its
    pause, and aiortc's buffer would wait forever for the gap to fill; aiortc
    also has no setting for a receiver's buffer size.
    """
    receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=capacity, is_video=True)


async def send_picture_loss_indication(receiver: RTCRtpReceiver, ssrc: int) -> None:
    """Ask the sender of stream ``ssrc`` for a keyframe (RTCP PLI), as aiortc does when its decoder fails.

    The engine does not decode, so aiortc never learns a picture was lost: the
    worker's decoder does, and the engine sends the request for it.
    """
    await receiver._send_rtcp_pli(ssrc)


# ---- transceivers and senders ----


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs the last negotiation settled on for ``transceiver``, preferred first (empty before one).

    aiortc sends with the first of them but exposes the list to no public API.
    """
    return transceiver._codecs


def prefer_codecs(transceiver: RTCRtpTransceiver, mime_types: Sequence[str]) -> None:
    """Put the negotiated codecs in ``mime_types`` first, in that order, before the answer is made (and sent with).

    aiortc answers in the offer's order; its ``setCodecPreferences`` does not
    reorder the codecs of a transceiver the offer made, whose codecs are
    chosen already. The others keep their place after them, a retransmission
    codec (RTX) beside the codec it repeats.
    """
    rank = {mime_type.lower(): place for place, mime_type in enumerate(mime_types)}
    codecs = transceiver._codecs
    rank_by_payload = {codec.payloadType: rank.get(codec.mimeType.lower(), len(rank)) for codec in codecs}

    def place(codec: RTCRtpCodecParameters) -> int:
        repeated = codec.parameters.get("apt") if is_rtx(codec) else None
        return rank_by_payload.get(repeated, len(rank)) if repeated is not None else rank_by_payload[codec.payloadType]

    codecs.sort(key=place)


class _FeedbackEncoder:
    """Stands in a sender's encoder so the peer's feedback reaches the bot's encoder in the worker.

    aiortc's sender packs pre-encoded packets with its codec's ``pack`` and
    writes the peer's bandwidth estimate (REMB) to ``target_bitrate``; both go
    through this object.
    """

    def __init__(self, codec: RTCRtpCodecParameters, on_bitrate: Callable[[int], None]):
        self._packer = get_encoder(codec)
        self.pack = self._packer.pack
        self._on_bitrate = on_bitrate
        self._bitrate = 0

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        # A smaller change would not make the encoder reopen, so it is not sent.
        if bitrate_changed(self._bitrate, bitrate):
            self._bitrate = bitrate
            self._on_bitrate(bitrate)


def forward_sender_feedback(
    sender: RTCRtpSender,
    codec: RTCRtpCodecParameters,
    on_keyframe_request: Callable[[], None],
    on_bitrate: Callable[[int], None],
) -> None:
    """Route a video sender's keyframe requests (PLI, FIR) and bitrate estimates (REMB) to callbacks.

    aiortc acts on them only when it encodes; with pre-encoded packets the
    encoder is elsewhere and must hear of them. The sender's keyframe hook is
    wrapped (it still marks the next frame) and its encoder replaced.
    """
    force_keyframe = sender._send_keyframe

    def on_rtcp_keyframe_request() -> None:
        force_keyframe()
        on_keyframe_request()

    sender._send_keyframe = on_rtcp_keyframe_request
    sender._RTCRtpSender__encoder = _FeedbackEncoder(codec, on_bitrate)


# ---- the data channel ----


def set_sctp_max_chunk_size(size: int) -> None:
    """Cap the data chunks of every SCTP association this process makes, in bytes.

    aiortc's 1200 bytes overflow a 1280-byte MTU path (IPv6, VPNs) and the data
    channel then stalls silently; aiortc has no setting for it, only this
    module global (Pipecat sets it the same way). See config/host.toml.
    """
    aiortc.rtcsctptransport.USERDATA_MAX_LENGTH = size


# ---- mDNS candidates ----

_aioice_mdns_protocol = aioice.ice.get_or_create_mdns_protocol
_mdns_answers: ContextVar[Mapping[str, str] | None] = ContextVar("mdns_answers", default=None)


class _AnsweredNames:
    """Stands in aioice's mDNS protocol while the engine adds candidates: it answers from a table, at once."""

    def __init__(self, names: Mapping[str, str]):
        self._names = names

    async def resolve(self, hostname: str, timeout: float | None = None) -> str | None:
        return self._names.get(hostname)


async def _answered_or_aioice_mdns_protocol(subscriber: object):
    names = _mdns_answers.get()
    if names is None:
        return await _aioice_mdns_protocol(subscriber)
    return _AnsweredNames(names)


@contextlib.contextmanager
def mdns_answered_from(names: Mapping[str, str]) -> Iterator[None]:
    """Within, aioice takes a remote mDNS candidate's address from ``names`` at once instead of asking the network.

    aioice resolves a ``.local`` candidate while it is being added (up to a
    second a name), and aiortc's ``addIceCandidate`` and ``setRemoteDescription``
    wait for it: the peer's actor would stall. The engine resolves the names
    off the actor (``engine/peer/mdns.py``) and adds each candidate once its
    name is in ``names``; a name that is not is dropped at once, never asked
    for. aioice still keeps the name as the candidate's host and pairs it as
    an mDNS candidate (never with a relay), as it does with a name it resolved
    itself. Only this task is affected, and the tasks it starts within.
    """
    # aioice looks its protocol up as a module global each time it resolves a
    # name; the stand-in stays, and outside a ``with`` it is aioice's own.
    aioice.ice.get_or_create_mdns_protocol = _answered_or_aioice_mdns_protocol
    token = _mdns_answers.set(names)
    try:
        yield
    finally:
        _mdns_answers.reset(token)


async def ask_network_mdns(name: str) -> str | None:
    """Ask the local network for the address of the mDNS host ``name`` (None when no one answers); waits as long as its caller does.

    The query goes out on aioice's mDNS protocol, the one socket on port 5353
    this process shares with aioice's connections; it is opened for the first
    name asked for and closed when no one is asking any more.
    """
    asker = object()
    try:
        protocol = await _aioice_mdns_protocol(asker)
        return await protocol.resolve(name, timeout=None)
    finally:
        await aioice.ice.unref_mdns_protocol(asker)
