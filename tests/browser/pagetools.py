"""In-page instruments for the browser tests, read through Playwright, and the checks the tests share.

``INSTRUMENT`` is added to every page before its own scripts run. It changes
nothing the page does: it keeps a reference to each ``RTCPeerConnection`` the
page makes (``window.__pcs``), so that a test can call ``getStats()`` on it and
tap the bot's audio track, and it listens, as one more listener, to what the
page's data channels receive (``window.__dcMessages``), whatever client code
made the connection (our demo page or Pipecat's prebuilt client).

Audio capture: the bot's received audio track (the receiver of transceiver 0)
goes into a WebAudio ``AnalyserNode`` in the page, a second and silent
consumer (the page's own ``<audio>`` element keeps playing the track, which
Chromium needs before remote audio flows into WebAudio). Once the first
non-zero samples have come through, the analyser's time-domain buffer, the last
32768 samples (0.68 s at 48 kHz), is handed to Python (Float32 bytes, base64),
where numpy measures its level (RMS) and its dominant frequency (Hann window,
FFT peak, parabolic interpolation); four buffers are taken 0.7 s apart. The
level is well below the WAV's: Chromium's voice processing (echo cancellation,
noise suppression, gain control, on by default for a microphone) turns a steady
tone down, to about -30 dBFS, but leaves its frequency alone.

Video: rates and sizes come from ``inbound-rtp`` stats (``framesDecoded``,
``frameWidth``/``frameHeight``); the picture itself is drawn from the page's
``<video>`` onto a canvas and compared with the fake camera's colour bars.

The device layer of Pipecat's SmallWebRTC web transport is replaced in the
pages that use it (the prebuilt clients, the app built with client-js), and
only there: it gets the camera and microphone through ``DailyMediaManager``
(daily-js), whose ``startCamera()`` downloads Daily's call-machine script from
the internet, which the tests cannot reach. ``with_plain_device_layer`` turns
the transport's ``new DailyMediaManager(...)`` into
``new (window.__plainMediaManager?.(DailyMediaManager) ?? DailyMediaManager)(...)``
(same arguments) in the script served to the browser, and
``PLAIN_MEDIA_MANAGER`` (``plain_media_manager.js``, added to the page first)
defines that class on the same base class, with plain ``getUserMedia()``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from tests.browser.fakemedia import TONE_HZ
from tests.support.client import bar_colours, bars_match
from tests.support.host import REPO

#: Screenshots and the logs of failed tests (gitignored).
ARTIFACTS = REPO / "test-artifacts" / "browser"

#: The bot's video must be decoded at least this fast.
MIN_FPS = 15.0

#: An init script: ``window.__plainMediaManager``, the stand-in device layer.
PLAIN_MEDIA_MANAGER = (Path(__file__).parent / "plain_media_manager.js").read_text()
# In the transport's constructor, minified: `this.mediaManager=t.mediaManager||new yo(`.
_DEVICE_LAYER = re.compile(r"(\.mediaManager=[\w$]+\.mediaManager\|\|new )([\w$]+)\(")

INSTRUMENT = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.__instrumented) return;
  window.__pcs = [];
  window.__dcMessages = [];  // {label, data} of every data channel message received, in order
  class Recorded extends Native {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
    createDataChannel(...args) {
      const channel = super.createDataChannel(...args);
      channel.addEventListener("message", ({ data }) => {
        if (typeof data === "string" && data.startsWith("ping")) return;
        window.__dcMessages.push({ label: channel.label, data: String(data) });
      });
      return channel;
    }
  }
  Recorded.__instrumented = true;
  window.RTCPeerConnection = Recorded;
})();
"""

_STATS = """
async (index) => {
  const pc = window.__pcs[index ?? window.__pcs.length - 1];
  if (!pc) return null;
  const out = { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
                candidates: [], inbound: {}, outbound: {}, pair: null };
  const report = await pc.getStats();
  let pairId = null;
  report.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
  });
  report.forEach((r) => {
    if (r.type === "local-candidate" || r.type === "remote-candidate") {
      out.candidates.push({ type: r.type, address: r.address ?? r.ip, port: r.port,
                            protocol: r.protocol, candidateType: r.candidateType });
    }
    // One entry per kind: the received audio (transceiver 0) and video (1); the camera's
    // sender (1) for outbound video, not the unused screen-share sender (2).
    if (r.type === "inbound-rtp") {
      out.inbound[r.kind] = { packetsReceived: r.packetsReceived, bytesReceived: r.bytesReceived,
        framesDecoded: r.framesDecoded, frameWidth: r.frameWidth, frameHeight: r.frameHeight,
        framesPerSecond: r.framesPerSecond, totalAudioEnergy: r.totalAudioEnergy,
        audioLevel: r.audioLevel, totalSamplesReceived: r.totalSamplesReceived,
        concealedSamples: r.concealedSamples, silentConcealedSamples: r.silentConcealedSamples, mid: r.mid };
    }
    if (r.type === "outbound-rtp" && (r.mid === "0" || r.mid === "1")) {
      out.outbound[r.kind] = { packetsSent: r.packetsSent, bytesSent: r.bytesSent, framesEncoded: r.framesEncoded };
    }
    if (r.type === "candidate-pair" && r.id === pairId) {
      out.pair = { state: r.state, nominated: r.nominated, rtt: r.currentRoundTripTime };
    }
  });
  out.now = performance.now();
  return out;
}
"""

_TAP_AUDIO = """
(index) => {
  const pc = window.__pcs[index ?? window.__pcs.length - 1];
  const receiver = pc.getTransceivers()[0].receiver;
  const ctx = new AudioContext({ sampleRate: 48000 });
  const source = ctx.createMediaStreamSource(new MediaStream([receiver.track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 32768;
  source.connect(analyser);  // not to ctx.destination: the page plays the audio itself
  ctx.resume();
  window.__audioTap = { ctx, analyser };
  return ctx.sampleRate;
}
"""

_READ_AUDIO = """
() => {
  // The analyser's last 32768 samples, as the bytes of a Float32Array in base64 (quicker than JSON numbers).
  const { analyser } = window.__audioTap;
  const samples = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(samples);
  const bytes = new Uint8Array(samples.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 8192) binary += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return btoa(binary);
}
"""

_AUDIO_TAP_FLOWING = """
() => {
  const { analyser } = window.__audioTap;
  const samples = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(samples);
  return samples.some((v) => v !== 0);
}
"""


def with_plain_device_layer(script: str) -> tuple[str, int]:
    """The (minified) script with the SmallWebRTC transport's device layer swapped, and how many swaps were made."""
    return _DEVICE_LAYER.subn(
        lambda m: f"{m.group(1)}(window.__plainMediaManager?.({m.group(2)})??{m.group(2)})(", script
    )


def rtc_stats(page, index: int | None = None) -> dict | None:
    """Connection state, candidates and inbound/outbound RTP of the page's (last) peer connection."""
    return page.evaluate(_STATS, index)


def wait_for_stats(page, predicate, timeout: float = 30.0, index: int | None = None) -> dict:
    """Polls ``rtc_stats`` until ``predicate(stats)`` holds."""
    deadline = time.monotonic() + timeout
    stats = None
    while time.monotonic() < deadline:
        stats = rtc_stats(page, index)
        if stats and predicate(stats):
            return stats
        page.wait_for_timeout(250)
    raise AssertionError(f"stats condition not met within {timeout} s; last stats: {stats}")


def wait_for_frame_rate(pages, minimum: float, window_s: float = 3.0, timeout: float = 45.0) -> list[dict]:
    """Waits until each page has decoded the bot's video at ``minimum`` fps or more over one ``window_s`` window.

    The rate is ``framesDecoded`` (``inbound-rtp``) over consecutive windows,
    measured for all pages at once. One good window per page is enough: the
    machine is shared, and a neighbour's burst of work should not fail a call
    that keeps up otherwise. Returns each page's last stats; raises with every
    window's rates when the time is up.
    """
    history = []
    best = [0.0] * len(pages)
    previous = [rtc_stats(page) for page in pages]
    deadline = time.monotonic() + timeout
    while True:
        pages[0].wait_for_timeout(window_s * 1000)
        current = [rtc_stats(page) for page in pages]
        rates = [
            (last["inbound"]["video"]["framesDecoded"] - first["inbound"]["video"]["framesDecoded"])
            * 1000.0 / (last["now"] - first["now"])
            for first, last in zip(previous, current)
        ]
        history.append([round(rate, 1) for rate in rates])
        best = [max(b, rate) for b, rate in zip(best, rates)]
        if all(b >= minimum for b in best):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"bot video below {minimum} fps; per {window_s} s window and page: {history}")
        previous = current


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The frequency of the strongest FFT bin (Hann window, parabolic interpolation)."""
    windowed = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if 0 < peak < len(spectrum) - 1:
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        peak += 0.5 * (a - c) / (a - 2 * b + c)
    return peak * rate / len(samples)


def capture_bot_audio(page, buffers: int = 3, index: int | None = None) -> list[tuple[float, float]]:
    """(RMS, dominant frequency) of a few 0.68 s buffers of the bot's received audio, 0.7 s apart."""
    import base64

    rate = page.evaluate(_TAP_AUDIO, index)
    # A new tap reads zeros until the track's first samples reach WebAudio: wait for
    # them (a silent bot never gets past this), then for a buffer full of them.
    page.wait_for_function(_AUDIO_TAP_FLOWING, timeout=15_000, polling=100)
    page.wait_for_timeout(750)
    results = []
    for _ in range(buffers):
        raw = base64.b64decode(page.evaluate(_READ_AUDIO))
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        results.append((float(np.sqrt(np.mean(samples**2))), dominant_frequency(samples, rate)))
        page.wait_for_timeout(700)
    page.evaluate("window.__audioTap.ctx.close()")
    return results


def video_picture(page, selector: str) -> np.ndarray:
    """The frame a ``<video>`` element shows now, as an RGB array (drawn onto a canvas in the page)."""
    import base64

    import cv2

    data_url = page.eval_on_selector(
        selector,
        """(video) => {
          const canvas = document.createElement("canvas");
          canvas.width = video.videoWidth;
          canvas.height = video.videoHeight;
          canvas.getContext("2d").drawImage(video, 0, 0);
          return canvas.toDataURL("image/png");
        }""",
    )
    png = base64.b64decode(data_url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- assertions shared by the tests


def assert_loopback_only(stats: dict) -> None:
    """Every ICE candidate either side offered (from ``getStats()``) is 127.0.0.1."""
    addresses = {c["address"] for c in stats["candidates"]}
    assert addresses == {"127.0.0.1"}, stats["candidates"]


def assert_bot_audio_is_the_tone(page, buffers: int = 4) -> list[tuple[float, float]]:
    """The bot's audio, as the page receives it, is the tone: most buffers loud, every loud one at the tone.

    On a starved machine a whole buffer (0.68 s) can fall into a dropout, so
    one silent buffer in two is tolerated; a silent or wrong stream is not.
    """
    taken = capture_bot_audio(page, buffers)
    audio = rtc_stats(page)["inbound"]["audio"]
    loud = [(rms, frequency) for rms, frequency in taken if rms > 0.003]
    assert len(loud) * 2 >= len(taken), f"the bot's audio is (mostly) silent: {taken}; stats: {audio}"
    for rms, frequency in loud:
        # A semitone away would be 26 Hz off; a dropout on a busy machine smears the peak a little.
        assert abs(frequency - TONE_HZ) < 8.0, f"the bot's audio is not the {TONE_HZ} Hz tone: {taken}"
    assert audio["totalAudioEnergy"] > 0, audio
    return taken


def assert_mirrored_bars(page, selector: str) -> None:
    """The ``<video>`` shows the fake camera's colour bars, mirrored (the demo bot flips the picture)."""
    picture = video_picture(page, selector)
    assert bars_match(picture, mirrored=True), f"not the mirrored colour bars: {bar_colours(picture)}"


def session_worker(host, pc_id: str) -> dict:
    """The worker the engine placed ``pc_id`` on (from ``GET /workers``)."""
    return host.wait_for(lambda workers: next((w for w in workers if pc_id in w["sessions"]), None))
