"""A test client that is a real aiortc peer speaking the browser's SmallWebRTC contract.

It does what Pipecat's web client (``@pipecat-ai/small-webrtc-transport``) does,
as described in ``docs/wire-contract.md``: three transceivers in a fixed order
(0 audio sendrecv, 1 video sendrecv, 2 video sendonly for the screen share), a
``"chat"`` data channel with a ``ping: <epoch ms>`` keepalive every second,
``trackStatus`` signalling on open, an offer POSTed with ``pc_id``/``restart_pc``/
``request_data``, the local candidates PATCHed after the answer, and a new offer
with the same ``pc_id`` when the server asks to renegotiate.

It sends a sine tone and colour bars, and keeps what it receives, so a test can
check an echo: :func:`dominant_frequency` for the audio, :func:`bars_match` for
the video.

All traffic stays on loopback: the peer connection gets an explicit empty ICE
server list (``None`` would make aiortc fall back to a public STUN server), and
:func:`engine.ice.restrict_host_addresses` limits host candidates to
``127.0.0.1`` unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import numpy as np
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import AudioFrame, AudioResampler, VideoFrame

from engine.ice import restrict_host_addresses

logger = logging.getLogger(__name__)

#: Sample rate of :attr:`TestPeer.received_audio` and of the tone sent.
SAMPLE_RATE = 48000

#: The bars of :class:`ColourBarsTrack`, left to right (RGB).
BAR_COLOURS: list[tuple[int, int, int]] = [
    (255, 255, 255),  # white
    (255, 255, 0),  # yellow
    (0, 255, 255),  # cyan
    (0, 255, 0),  # green
    (255, 0, 255),  # magenta
    (255, 0, 0),  # red
    (0, 0, 255),  # blue
    (0, 0, 0),  # black
]


# --------------------------------------------------------------------------- tracks


class ToneTrack(AudioStreamTrack):
    """A sine tone: 48 kHz mono s16 in 20 ms frames, paced on the wall clock by pts."""

    def __init__(
        self,
        frequency: float = 440.0,
        *,
        sample_rate: int = SAMPLE_RATE,
        amplitude: float = 0.3,
        ptime: float = 0.020,
    ) -> None:
        """A tone of ``frequency`` Hz at ``amplitude`` of full scale."""
        super().__init__()
        self.frequency = frequency
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self._samples = int(round(ptime * sample_rate))

    async def recv(self) -> AudioFrame:
        """The next 20 ms of tone, once its time has come."""
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += self._samples
            wait = self._start + self._timestamp / self.sample_rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        else:
            self._start = time.time()
            self._timestamp = 0
        n = np.arange(self._timestamp, self._timestamp + self._samples, dtype=np.float64)
        wave = self.amplitude * 32767.0 * np.sin(2.0 * np.pi * self.frequency * n / self.sample_rate)
        frame = AudioFrame.from_ndarray(wave.astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame


def colour_bars(width: int, height: int, colours: Sequence[tuple[int, int, int]] = BAR_COLOURS) -> np.ndarray:
    """An RGB picture (height x width x 3, uint8) of vertical bars of ``colours``."""
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    bars = len(colours)
    for i, colour in enumerate(colours):
        rgb[:, i * width // bars : (i + 1) * width // bars] = colour
    return rgb


class ColourBarsTrack(VideoStreamTrack):
    """Eight vertical colour bars (:data:`BAR_COLOURS`), 30 fps paced like aiortc's VideoStreamTrack."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        """Bars of ``width`` x ``height`` pixels."""
        super().__init__()
        self.width = width
        self.height = height
        self._rgb = colour_bars(width, height)

    async def recv(self) -> VideoFrame:
        """The next frame, once its time has come."""
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self._rgb, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


# ------------------------------------------------------------------------- analysis


def dominant_frequency(samples: np.ndarray, sample_rate: int, *, silence: float = 0.01) -> float:
    """The strongest frequency in ``samples`` (Hann-windowed FFT, interpolated peak).

    Leading and trailing samples below ``silence`` of full scale are skipped.
    Integer samples are taken as int16; float samples as -1..1.
    Returns 0.0 when there is (almost) nothing but silence.
    """
    x = np.asarray(samples).ravel()
    x = x.astype(np.float64) / 32768.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > silence)
    if loud.size == 0:
        return 0.0
    x = x[loud[0] : loud[-1] + 1]
    if x.size < 256:
        return 0.0
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    delta = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denominator = a - 2 * b + c
        if denominator != 0:
            delta = 0.5 * (a - c) / denominator
    return float((k + delta) * sample_rate / x.size)


def bar_colours(rgb: np.ndarray, bars: int = 8) -> list[tuple[int, int, int]]:
    """The median colour of each vertical bar, from its middle half (edges left out)."""
    height, width = rgb.shape[:2]
    rows = rgb[height // 4 : height - height // 4]
    colours = []
    for i in range(bars):
        x0, x1 = i * width // bars, (i + 1) * width // bars
        margin = (x1 - x0) // 4
        region = rows[:, x0 + margin : max(x1 - margin, x0 + margin + 1), :3]
        median = np.median(region.reshape(-1, 3), axis=0)
        colours.append(tuple(int(round(v)) for v in median))
    return colours


def bars_match(
    rgb: np.ndarray,
    expected: Sequence[tuple[int, int, int]] = BAR_COLOURS,
    tolerance: int = 40,
    mirrored: bool = False,
) -> bool:
    """Whether ``rgb`` shows the ``expected`` bars, each channel within ``tolerance``.

    With ``mirrored`` the picture is expected flipped left to right.
    """
    wanted = list(reversed(expected)) if mirrored else list(expected)
    found = bar_colours(rgb, len(wanted))
    return all(
        abs(f - w) <= tolerance for got, want in zip(found, wanted, strict=True) for f, w in zip(got, want)
    )


# --------------------------------------------------------------------------- client


class SignallingError(RuntimeError):
    """An HTTP signalling request was answered with an error status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


class TestPeer:
    """A browser-like SmallWebRTC client on aiortc.

    Attributes:
        pc: The current ``RTCPeerConnection`` (a new one after ``renegotiate(restart_pc=True)``).
        pc_id: The server's id for the peer connection, from the answer.
        session_id: The ``/start`` session, with ``use_start``.
        ice_servers: The ICE servers ``/start`` handed out (its ``iceConfig``), with ``use_start``.
        messages: Application messages received (JSON-decoded; text that isn't JSON as is).
        signalling: Signalling messages received (the inner ``message``, e.g. ``{"type": "peerLeft"}``).
        received_video: The last ``video_frames_kept`` frames: ``(time.monotonic(), rgb ndarray)``.
        video_frame_count: Video frames received in all.
        audio_samples_total: Audio samples (48 kHz mono) received in all.
        audio_formats: ``(format, layout, sample_rate)`` of the audio frames aiortc handed out.
        audio_levels: ``(time.monotonic(), RMS level)`` of each received audio frame.
        errors: Exceptions of background work (automatic renegotiation, receivers).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        base_url: str,
        *,
        tone_hz: float = 440.0,
        width: int = 320,
        height: int = 240,
        offer_path: str = "/api/offer",
        use_start: bool = False,
        data_channel: bool = True,
        send_video: bool = True,
        screen_video: bool = False,
        auto_renegotiate: bool = True,
        patch_candidates_after_answer: bool = True,
        ice_host_addresses: Sequence[str] | None = ("127.0.0.1",),
        connect_timeout: float = 20.0,
        http_timeout: float = 10.0,
        video_frames_kept: int = 30,
        audio_seconds_kept: float = 60.0,
    ) -> None:
        """A client for the server at ``base_url`` (e.g. ``http://127.0.0.1:7860``).

        Args:
            base_url: Server origin, without a trailing slash.
            tone_hz: Frequency of the tone sent on the microphone track.
            width: Width of the colour bars sent on the camera track.
            height: Height of the colour bars.
            offer_path: Path to POST/PATCH offers to (without ``use_start``).
            use_start: ``POST /start`` first and use ``/sessions/{sessionId}/api/offer``.
            data_channel: Create the ``"chat"`` data channel.
            send_video: Send colour bars on transceiver 1 (else it has no track).
            screen_video: Send colour bars as a screen share on transceiver 2 (else it has no track).
            auto_renegotiate: Answer a ``renegotiate`` signal with a new offer, as the web client does.
            patch_candidates_after_answer: PATCH the offer's candidates after the answer, as the web client does.
            ice_host_addresses: Host candidate addresses for this process (``None`` leaves aioice's choice).
            connect_timeout: Seconds to wait for ``connectionState == "connected"``.
            http_timeout: Seconds for each HTTP request.
            video_frames_kept: How many received video frames to keep.
            audio_seconds_kept: How much received audio to keep (older audio is dropped).
        """
        self.base_url = base_url.rstrip("/")
        self.tone_hz = tone_hz
        self.width = width
        self.height = height
        self.offer_path = offer_path
        self.use_start = use_start
        self.data_channel = data_channel
        self.send_video = send_video
        self.screen_video = screen_video
        self.auto_renegotiate = auto_renegotiate
        self.patch_candidates_after_answer = patch_candidates_after_answer
        self.ice_host_addresses = ice_host_addresses
        self.connect_timeout = connect_timeout
        self.http_timeout = http_timeout

        self.pc: RTCPeerConnection | None = None
        self.pc_id: str | None = None
        self.session_id: str | None = None
        self.channel: RTCDataChannel | None = None
        self.messages: list[Any] = []
        self.signalling: list[dict] = []
        self.received_video: deque[tuple[float, np.ndarray]] = deque(maxlen=video_frames_kept)
        self.video_frame_count = 0
        self.audio_samples_total = 0
        self.audio_formats: set[tuple[str, str, int]] = set()
        self.audio_levels: deque[tuple[float, float]] = deque(maxlen=int(audio_seconds_kept * 50))
        self.errors: list[BaseException] = []

        self._audio_chunks: deque[np.ndarray] = deque()
        self._audio_kept = 0
        self._audio_keep = int(audio_seconds_kept * SAMPLE_RATE)
        self._resampler: AudioResampler | None = None
        self._offer_url: str | None = None
        self.ice_servers: list[RTCIceServer] = []
        self._request_data: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._local_tracks: list = []
        self._pc_tasks: set[asyncio.Task] = set()  # die with the current peer connection
        self._tasks: set[asyncio.Task] = set()  # every background task
        self._ping_task: asyncio.Task | None = None
        self._pings_stopped = False
        self._negotiation_lock = asyncio.Lock()
        self._update = asyncio.Event()
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def received_audio(self) -> np.ndarray:
        """The audio received (int16, mono, 48 kHz), at most the last ``audio_seconds_kept``."""
        if not self._audio_chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(list(self._audio_chunks))

    async def connect(self, request_data: Any = None) -> None:
        """Negotiate with the server; wait until the peer connection is connected and the channel open.

        Raises:
            SignallingError: The server answered an HTTP request with an error.
            TimeoutError: Not connected within ``connect_timeout`` seconds.
            ConnectionError: The peer connection failed or closed meanwhile.
        """
        if self.pc is not None or self._closed:
            raise RuntimeError("TestPeer.connect() may be called once")
        if self.ice_host_addresses is not None:
            restrict_host_addresses(list(self.ice_host_addresses))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.http_timeout))
        self._request_data = request_data
        try:
            async with self._negotiation_lock:
                if self.use_start:
                    start = await self._request(
                        "POST",
                        self.base_url + "/start",
                        {"transport": "webrtc", "enableDefaultIceServers": False, "body": request_data or {}},
                    )
                    self.session_id = start["sessionId"]
                    servers = ((start.get("iceConfig") or {}).get("iceServers")) or []
                    self.ice_servers = [
                        RTCIceServer(
                            urls=s["urls"], username=s.get("username"), credential=s.get("credential")
                        )
                        for s in servers
                    ]
                    self._offer_url = f"{self.base_url}/sessions/{self.session_id}/api/offer"
                else:
                    self._offer_url = self.base_url + self.offer_path
                self._build_pc()
                await self._negotiate(restart_pc=False)
                await self._wait_connected()
        except BaseException:
            await self.close()
            raise

    async def send_app_message(self, message: Any) -> None:
        """Send an application message (JSON) on the data channel; it must be open."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            raise RuntimeError("the data channel is not open")
        channel.send(json.dumps(message))

    async def send_track_status(self, receiver_index: int, enabled: bool) -> None:
        """Tell the server a source was turned on or off (what the web client does on mute)."""
        await self.send_app_message(
            {
                "type": "signalling",
                "message": {"type": "trackStatus", "receiver_index": receiver_index, "enabled": enabled},
            }
        )

    async def wait_for_message(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """The first app message (received before or after the call) for which ``predicate`` is true.

        A predicate raising ``KeyError``/``TypeError``/``AttributeError``/``IndexError`` counts as false.
        """

        def find() -> Any:
            for message in self.messages:
                with contextlib.suppress(KeyError, TypeError, AttributeError, IndexError):
                    if predicate(message):
                        return message
            return None

        return await self._wait_until(find, timeout, "an app message matching the predicate")

    async def wait_for_signalling(self, type_: str, timeout: float = 10.0) -> dict:
        """The first signalling message (before or after the call) of type ``type_``."""

        def find() -> dict | None:
            return next((m for m in self.signalling if isinstance(m, dict) and m.get("type") == type_), None)

        return await self._wait_until(find, timeout, f"signalling message {type_!r}")

    async def wait_for_channel_closed(self, timeout: float = 10.0) -> None:
        """Wait until the data channel is closed: nothing more can arrive on it."""
        await self._wait_until(
            lambda: (self.channel is not None and self.channel.readyState == "closed") or None,
            timeout,
            "the data channel to close",
        )

    async def wait_for_audio(self, seconds: float, timeout: float = 15.0) -> np.ndarray:
        """Wait until ``seconds`` more audio has arrived; returns that audio (int16 mono 48 kHz)."""
        needed = int(seconds * SAMPLE_RATE)
        target = self.audio_samples_total + needed
        await self._wait_until(
            lambda: self.audio_samples_total >= target or None, timeout, f"{seconds} s of audio"
        )
        return self.received_audio[-needed:] if needed else np.zeros(0, dtype=np.int16)

    async def wait_for_video_frames(self, n: int, timeout: float = 15.0) -> list[tuple[float, np.ndarray]]:
        """Wait until ``n`` more video frames have arrived; returns the newest of them (as many as are kept)."""
        target = self.video_frame_count + n
        await self._wait_until(lambda: self.video_frame_count >= target or None, timeout, f"{n} video frames")
        frames = list(self.received_video)
        return frames[-n:] if n else []

    async def renegotiate(self, restart_pc: bool = False) -> None:
        """Make a new offer under the same ``pc_id``.

        With ``restart_pc`` the peer connection is closed and a new one is built
        (what the web client does after an ICE failure); then it waits until connected.
        """
        async with self._negotiation_lock:
            if self.pc is None or self.pc_id is None or self._closed:
                raise RuntimeError("not connected")
            if restart_pc:
                await self._teardown_pc()
                self._build_pc()
            await self._negotiate(restart_pc=restart_pc)
            await self._wait_connected()

    async def patch_candidates(self, candidates: list[dict]) -> tuple[int, Any]:
        """PATCH ICE candidates (``{"candidate", "sdp_mid", "sdp_mline_index"}``) for this ``pc_id``.

        Returns ``(status, body)``, the body JSON-decoded when it is JSON. Never raises for a status.
        """
        if self._http is None or self._offer_url is None:
            raise RuntimeError("not connected")
        payload = {"pc_id": self.pc_id, "candidates": candidates}
        async with self._http.patch(self._offer_url, json=payload) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return response.status, body

    def local_candidates(self) -> list[dict]:
        """The candidates of the local description's first (bundled) media section, in PATCH form."""
        if self.pc is None or self.pc.localDescription is None:
            return []
        candidates = []
        mid, index = None, -1
        for line in self.pc.localDescription.sdp.splitlines():
            if line.startswith("m="):
                index += 1
                if index > 0:
                    break
            elif line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:"):
                candidates.append({"candidate": line[2:], "sdp_mid": None, "sdp_mline_index": 0})
        for candidate in candidates:
            candidate["sdp_mid"] = mid if mid is not None else "0"
        return candidates

    def stop_sending(self) -> None:
        """End the local tracks, as a browser's ``track.stop()`` does: this connection sends no more media."""
        for track in self._local_tracks:
            track.stop()

    async def stop_pings(self) -> None:
        """Stop the ``ping`` keepalive (the server should soon count the peer as gone)."""
        self._pings_stopped = True
        task, self._ping_task = self._ping_task, None
        if task is not None:
            await self._cancel([task])

    async def resume_pings(self) -> None:
        """Start the keepalive again after :meth:`stop_pings`."""
        self._pings_stopped = False
        self._start_pings()

    async def close(self) -> None:
        """Stop every task, close the data channel and the peer connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        await self._cancel([t for t in self._tasks if t is not current])
        await self._teardown_pc()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        self._notify()

    async def __aenter__(self) -> TestPeer:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _spawn(self, coro, *, pc_scoped: bool) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if pc_scoped:
            self._pc_tasks.add(task)
            task.add_done_callback(self._pc_tasks.discard)
        return task

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task], timeout: float = 5.0) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _notify(self) -> None:
        event, self._update = self._update, asyncio.Event()
        event.set()

    async def _wait_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            update = self._update
            result = check()
            if result is not None:
                return result
            if self._closed:
                raise ConnectionError(f"TestPeer closed while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what} ({self._describe()})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(update.wait(), remaining)

    def _describe(self) -> str:
        state = self.pc.connectionState if self.pc else "no pc"
        channel = self.channel.readyState if self.channel else "no channel"
        return (
            f"pc_id={self.pc_id} connectionState={state} channel={channel} "
            f"audio={self.audio_samples_total / SAMPLE_RATE:.2f}s video_frames={self.video_frame_count} "
            f"messages={len(self.messages)} signalling={self.signalling[-5:]}"
        )

    async def _wait_connected(self) -> None:
        pc = self.pc

        def check() -> bool | None:
            state = pc.connectionState
            channel = self.channel
            if state == "connected" and (channel is None or channel.readyState == "open"):
                return True
            if channel is not None and channel.readyState == "closed":
                raise ConnectionError(f"data channel closed before opening ({self._describe()})")
            if state in ("failed", "closed"):
                raise ConnectionError(f"peer connection {state} before connecting ({self._describe()})")
            return None

        try:
            await self._wait_until(check, self.connect_timeout, "connected peer connection")
        except TimeoutError as e:
            raise TimeoutError(
                f"peer connection not connected (or data channel not open) within {self.connect_timeout} s ({self._describe()})"
            ) from e

    async def _request(self, method: str, url: str, payload: dict) -> Any:
        assert self._http is not None
        async with self._http.request(method, url, json=payload) as response:
            text = await response.text()
            if response.status >= 400:
                raise SignallingError(method, url, response.status, text)
            return json.loads(text)

    # Hooks a subclass may override (the load generator of tests/bench does).

    def _make_local_tracks(self) -> tuple[Any, Any]:
        """The tracks to send: (microphone, camera or None). Called for every new peer connection."""
        audio = ToneTrack(self.tone_hz)
        video = ColourBarsTrack(self.width, self.height) if self.send_video else None
        return audio, video

    def _configure_pc(self, pc: RTCPeerConnection) -> None:
        """Called once the three transceivers are added, before any negotiation."""

    def _on_remote_track(self, track) -> None:
        """A remote track arrived on the current peer connection: by default, read and keep it."""
        self._spawn(self._receive(track), pc_scoped=True)

    def _offer_sdp(self, sdp: str) -> str:
        """The offer to POST, from the local description's SDP (by default, as is: candidates included)."""
        return sdp

    async def _answer_arrived(self, answer: dict) -> None:
        """Called with each answer, ``pc_id`` already known, before it is applied."""

    def _build_pc(self) -> None:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=list(self.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc = pc
        audio, video = self._make_local_tracks()
        self._local_tracks = [t for t in (audio, video) if t is not None]
        pc.addTransceiver(audio, direction="sendrecv")
        pc.addTransceiver(video if video is not None else "video", direction="sendrecv")
        screen = ColourBarsTrack(self.width, self.height) if self.screen_video else None
        if screen is not None:
            self._local_tracks.append(screen)
        pc.addTransceiver(screen or "video", direction="sendonly")  # the screen share slot
        self._configure_pc(pc)

        @pc.on("track")
        def on_track(track) -> None:
            if pc is self.pc:
                self._on_remote_track(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self._notify()

        self.channel = None
        if self.data_channel:
            channel = pc.createDataChannel("chat", ordered=True)
            self.channel = channel

            @channel.on("open")
            def on_open() -> None:
                if channel is not self.channel or self._closed:
                    return
                self._start_pings()
                with contextlib.suppress(Exception):
                    for index, enabled in ((0, True), (1, self.send_video)):
                        channel.send(
                            json.dumps(
                                {
                                    "type": "signalling",
                                    "message": {"type": "trackStatus", "receiver_index": index, "enabled": enabled},
                                }
                            )
                        )
                self._notify()

            @channel.on("message")
            def on_message(message) -> None:
                self._on_message(message)

            @channel.on("close")
            def on_close() -> None:
                self._notify()

    async def _negotiate(self, restart_pc: bool) -> None:
        pc = self.pc
        assert pc is not None and self._offer_url is not None
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # aiortc gathers every candidate here
        answer = await self._request(
            "POST",
            self._offer_url,
            {
                "sdp": self._offer_sdp(pc.localDescription.sdp),
                "type": "offer",
                "pc_id": self.pc_id,
                "restart_pc": restart_pc,
                "request_data": self._request_data,
            },
        )
        self.pc_id = answer["pc_id"]
        await self._answer_arrived(answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        if self.patch_candidates_after_answer:
            candidates = self.local_candidates()
            if candidates:
                status, body = await self.patch_candidates(candidates)
                if status >= 400:
                    raise SignallingError("PATCH", self._offer_url, status, str(body))

    async def _teardown_pc(self) -> None:
        """Close the current peer connection and what belongs to it."""
        self._ping_task = None  # a pc-scoped task, cancelled below
        current = asyncio.current_task()
        await self._cancel([t for t in self._pc_tasks if t is not current])
        channel, self.channel = self.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        for track in self._local_tracks:
            track.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5.0)
        self._resampler = None

    def _start_pings(self) -> None:
        if self._pings_stopped or self._closed or (self._ping_task and not self._ping_task.done()):
            return
        if self.channel is None:
            return
        self._ping_task = self._spawn(self._ping(self.channel), pc_scoped=True)

    async def _ping(self, channel: RTCDataChannel) -> None:
        while channel.readyState == "open":
            try:
                channel.send(f"ping: {int(time.time() * 1000)}")
            except Exception:
                return
            await asyncio.sleep(1.0)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        try:
            decoded = json.loads(message)
        except ValueError:
            decoded = message
        if isinstance(decoded, dict) and decoded.get("type") == "signalling" and "message" in decoded:
            inner = decoded["message"]
            self.signalling.append(inner)
            if self.auto_renegotiate and isinstance(inner, dict) and inner.get("type") == "renegotiate":
                self._spawn(self._renegotiate_on_request(), pc_scoped=False)
        else:
            self.messages.append(decoded)
        self._notify()

    async def _renegotiate_on_request(self) -> None:
        try:
            await self.renegotiate(restart_pc=False)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # kept for the test to look at
            logger.warning("renegotiation asked by the server failed: %s", e)
            self.errors.append(e)

    async def _receive(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    self._on_audio(frame)
                elif isinstance(frame, VideoFrame):
                    self._on_video(frame)
                self._notify()
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("receiving %s failed: %s", track.kind, e)
            self.errors.append(e)

    def _on_audio(self, frame: AudioFrame) -> None:
        self.audio_formats.add((frame.format.name, frame.layout.name, frame.sample_rate))
        if frame.sample_rate == SAMPLE_RATE and frame.format.name in ("s16", "s16p"):
            data = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                mono = data.astype(np.int32).mean(axis=0)
            else:
                mono = data.reshape(-1, channels).astype(np.int32).mean(axis=1)
            chunks = [np.round(mono).astype(np.int16)]
        else:
            if self._resampler is None:
                self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            chunks = [f.to_ndarray().reshape(-1).astype(np.int16) for f in self._resampler.resample(frame)]
        for chunk in chunks:
            self.audio_levels.append((time.monotonic(), float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) if chunk.size else 0.0))
            self._audio_chunks.append(chunk)
            self._audio_kept += chunk.size
            self.audio_samples_total += chunk.size
        while self._audio_kept > self._audio_keep and len(self._audio_chunks) > 1:
            self._audio_kept -= self._audio_chunks.popleft().size

    def _on_video(self, frame: VideoFrame) -> None:
        self.received_video.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
        self.video_frame_count += 1
