"""Real aiortc peers on loopback for the engine's unit tests, and a worker whose messages a test reads.

``PeerRig`` runs a ``PeerActor`` for one ``ClientPeer`` (the browser's side,
a real aiortc peer connection) with a ``TestWorker`` in place of the worker
process: a real ``WorkerHandle`` and ``Outbox``, pumped into a list the test
reads, and ``MdnsResponders`` in place of the network's mDNS responders.
Everything stays on 127.0.0.1 and no ICE server is ever asked.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TypeVar

import zmq
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

from engine.common.link import Frames, Outbox
from engine.common.protocol import FromEngine, SessionOpen, decode_from_engine
from engine.common.settings import HostSettings
from engine.ice import restrict_host_addresses
from engine.metrics import HostMetrics, SessionOutcome
from engine.peer import PeerActor
from engine.registry import WorkerHandle

PC_ID = "pc-test"
# How long a test waits for something that should come within a second or two.
WAIT_S = 10.0

M = TypeVar("M")


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Gather host candidates on 127.0.0.1 only, for the duration."""
    restrict_host_addresses(["127.0.0.1"])
    try:
        yield
    finally:
        restrict_host_addresses([])


def trickled(candidate: str) -> RTCIceCandidate:
    """A candidate (``a=candidate:`` attribute's value) as the client PATCHes it, for the first media section."""
    parsed = candidate_from_sdp(candidate)
    parsed.sdpMid, parsed.sdpMLineIndex = "0", 0
    return parsed


def mdns_name(n: int) -> str:
    """The ``n``-th mDNS host name of a test (a browser's are random UUIDs)."""
    return f"00000000-0000-4000-8000-{n:012d}.local"


def mdns_candidate(n: int, port: int = 9) -> RTCIceCandidate:
    """A host candidate named by ``mdns_name(n)``, trickled."""
    return trickled(f"{n} 1 udp 2122260223 {mdns_name(n)} {port} typ host")


def without_end_of_candidates(sdp: str) -> str:
    """An offer as a browser that trickles its candidates makes it: no end of candidates yet."""
    return sdp.replace("a=end-of-candidates\r\n", "")


def client_pc() -> RTCPeerConnection:
    """A peer connection that asks no ICE server (``None`` would make aiortc use a public STUN server)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class TestWorker:
    """A worker as the engine sees it: a real handle whose outbox is pumped into ``received``."""

    __test__ = False  # not a pytest test class

    def __init__(self, worker_id: str):
        """Initialize the worker; ``async with`` it to start its pump.

        Args:
            worker_id: Its id.
        """
        self.handle = WorkerHandle(
            worker_id=worker_id,
            pid=0,
            hostname="localhost",
            capacity=1,
            outbox=Outbox(f"outbox to worker {worker_id}"),
        )
        self.received: list[tuple[FromEngine, list[bytes]]] = []
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> "TestWorker":
        self.handle.pump_task = asyncio.create_task(self.handle.outbox.pump(self._receive))
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.handle.pump_task.cancel()

    def _receive(self, frames: Frames) -> bool:
        self.received.append((decode_from_engine(frames[0]), frames[1:]))
        self._arrived.set()
        return True

    def messages(self, kind: type[M]) -> list[M]:
        """The messages of this type received so far, in order."""
        return [message for message, _ in self.received if isinstance(message, kind)]

    async def wait_for(self, kind: type[M], matches: Callable[[M], bool] = lambda _: True, count: int = 1) -> list[M]:
        """Wait until ``count`` messages of ``kind`` that ``matches`` have arrived; return them all.

        Raises:
            TimeoutError: If they do not come within ``WAIT_S``.
        """
        async with asyncio.timeout(WAIT_S):
            while len(found := [m for m in self.messages(kind) if matches(m)]) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return found


class MdnsResponders:
    """The mDNS responders of a peer's network, as an actor's ``mdns_lookup`` asks them.

    A name is answered once the test ``publish``es it, and until then its
    lookup waits, as on a network where no one answers, until the asker gives up.

    Attributes:
        asked: The names looked up, in order.
        pending: The names being looked up now.
        cancelled: The names whose lookup the asker cancelled.
    """

    def __init__(self):
        """Initialize the responders: no name is published."""
        self.asked: list[str] = []
        self.pending: set[str] = set()
        self.cancelled: list[str] = []
        self._answers: dict[str, asyncio.Future] = {}

    def publish(self, name: str, address: str) -> None:
        """Have ``name`` answered with ``address``, now and from now on."""
        answer = self._answer(name)
        if not answer.done():
            answer.set_result(address)

    async def lookup(self, name: str) -> str | None:
        """Ask for ``name``; return its address once it is published."""
        self.asked.append(name)
        self.pending.add(name)
        try:
            # Shielded: a lookup given up does not unpublish the name for the others.
            return await asyncio.shield(self._answer(name))
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.pending.discard(name)

    def _answer(self, name: str) -> asyncio.Future:
        return self._answers.setdefault(name, asyncio.get_running_loop().create_future())


class ClientPeer:
    """The browser's side: the contract's three transceivers (0 audio, 1 camera, 2 screen share) and a "chat" channel."""

    __test__ = False  # not a pytest test class

    def __init__(self, send_media: bool):
        """Initialize the peer.

        Args:
            send_media: Send a silent microphone and a camera (else the transceivers carry nothing).
        """
        self._send_media = send_media
        self.received: list[str] = []
        self._arrived = asyncio.Event()
        self._new_pc()

    def _new_pc(self) -> None:
        self.pc = client_pc()
        audio, video = (AudioStreamTrack(), VideoStreamTrack()) if self._send_media else ("audio", "video")
        self.pc.addTransceiver(audio, direction="sendrecv")
        self.pc.addTransceiver(video, direction="sendrecv")
        self.pc.addTransceiver("video", direction="sendonly")
        self.channel = self.pc.createDataChannel("chat", ordered=True)
        self._opened = asyncio.Event()
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._receive)

    def _receive(self, message: str) -> None:
        self.received.append(message)
        self._arrived.set()

    async def negotiate(self, actor: PeerActor, restart_pc: bool = False, rewrite: Callable[[str], str] = str) -> dict:
        """Offer to ``actor`` and apply its answer; return the answer.

        Args:
            actor: The actor offered to.
            restart_pc: Offer a new peer connection under the same pc_id.
            rewrite: What the offer's SDP becomes on its way (what a browser offers differently).
        """
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription
        answer = await actor.offer(rewrite(offer.sdp), offer.type, restart_pc)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def restart(self, actor: PeerActor, rewrite: Callable[[str], str] = str) -> dict:
        """Replace the peer connection, as the web client does after a failure, and offer the new one with ``restart_pc``."""
        await self.pc.close()
        self._new_pc()
        return await self.negotiate(actor, restart_pc=True, rewrite=rewrite)

    async def close(self) -> None:
        """Close the peer connection."""
        await self.pc.close()

    async def wait_until_open(self) -> None:
        """Wait for the data channel to open."""
        async with asyncio.timeout(WAIT_S):
            await self._opened.wait()

    def send_signalling(self, message: dict) -> None:
        """Send a signalling message to the host."""
        self.channel.send(json.dumps({"type": "signalling", "message": message}))

    def signalling(self) -> list[dict]:
        """The signalling messages received, in order."""
        envelopes = [json.loads(text) for text in self.received]
        return [e["message"] for e in envelopes if isinstance(e, dict) and e.get("type") == "signalling"]

    async def wait_for(self, matches: Callable[[list[str]], bool]) -> None:
        """Wait until what was received ``matches``."""
        async with asyncio.timeout(WAIT_S):
            while not matches(self.received):
                self._arrived.clear()
                await self._arrived.wait()


class PeerRig:
    """A ``PeerActor`` answering a ``ClientPeer`` on loopback, its bot on a ``TestWorker``.

    Attributes:
        actor: The actor under test, run from entry to exit.
        client: The browser's side.
        worker: The worker that runs the session's bot.
        made: The configuration and peer connection of each ``pc_factory`` call.
        mdns: The mDNS responders the actor's lookups ask.
        ended: The actor, once its session has ended (``on_ended``).
        metrics: The metrics it counts in.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, send_media: bool = False, **settings):
        """Initialize the rig; ``async with`` it to run it.

        Args:
            send_media: Whether the client sends a microphone and a camera.
            **settings: ``HostSettings`` for the actor (its timers).
        """
        self._send_media = send_media
        self._settings = HostSettings(ice_servers=[], **settings)
        self.worker = TestWorker("worker-1")
        self.made: list[tuple[RTCConfiguration, RTCPeerConnection]] = []
        self.mdns = MdnsResponders()
        self.ended: list[PeerActor] = []
        # The gauges read the engine at scrape time: this stand-in has one live peer and no worker.
        no_engine = SimpleNamespace(live_peer_count=lambda: 1, draining=False, loop_lag_ms=0.0, registry=[])
        self.metrics = HostMetrics(no_engine)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> "PeerRig":
        self._stack.enter_context(loopback_only())
        await self._stack.enter_async_context(self.worker)
        self.client = ClientPeer(self._send_media)
        self._stack.push_async_callback(self.client.close)
        opening = SessionOpen(PC_ID, runner_session_id="runner-1")
        self.actor = PeerActor(
            opening,
            self._settings,
            self.worker.handle,
            self.metrics,
            self.ended.append,
            pc_factory=self._make_pc,
            mdns_lookup=self.mdns.lookup,
        )
        self._stack.push_async_callback(self._stop_actor, asyncio.create_task(self.actor.run()))
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._stack.aclose()

    def _make_pc(self, config: RTCConfiguration) -> RTCPeerConnection:
        pc = RTCPeerConnection(config)
        self.made.append((config, pc))
        return pc

    async def _stop_actor(self, run: asyncio.Task) -> None:
        self.actor.close("test over", SessionOutcome.HOST_STOPPED)
        async with asyncio.timeout(WAIT_S):
            await run

    async def connect(self, rewrite: Callable[[str], str] = str) -> dict:
        """Negotiate (``rewrite`` as ``ClientPeer.negotiate`` takes it) and wait for the data channel to open; return the answer."""
        answer = await self.client.negotiate(self.actor, rewrite=rewrite)
        await self.client.wait_until_open()
        return answer

    def from_bot(self, message, *payload: bytes) -> None:
        """Hand the actor a message from its worker, its media in frames as the link delivers them."""
        self.actor.deliver(message, [zmq.Frame(data) for data in payload])

    def sessions_ended(self, outcome: SessionOutcome) -> float:
        """How many sessions the metrics count as ended with ``outcome``."""
        return self.metrics.registry.get_sample_value("smallwebrtc_sessions_total", {"outcome": outcome}) or 0.0
