"""The host's own demo page (``/``) in headless Chromium: a real call with the demo bot, then three at once.

The fake microphone plays a 440 Hz tone and the fake camera its test pattern;
the demo bot echoes both. What is checked, and from where:

- connection: the page's state and ``RTCPeerConnection.connectionState``, and
  every ICE candidate (local and remote, from ``getStats()``) is 127.0.0.1;
- bot audio: the received track, tapped with a WebAudio ``AnalyserNode`` in the
  page (see ``pagetools``), is not silence and peaks at the tone's frequency;
- bot video: ``inbound-rtp`` stats, frames decoded at the size asked for in the
  page's URL (the page passes its query parameters to the bot) and at 15 fps
  or more (``framesDecoded`` over a 3 s window; see ``wait_for_frame_rate``),
  and the picture (drawn from the page's ``<video>`` onto a canvas) is the
  fake camera's colour bars, mirrored;
- messages: a chat line typed into the page (an RTVI ``client-message``) comes
  back from the bot, which names its worker; the bot's ``host-info`` matches
  the worker the engine placed the session on;
- Disconnect: the worker reports zero sessions;
- offline: every request the page makes goes to the host.

Then three pages call at once, on a host with three workers: each lands on its
own worker and gets all of the above (at a lower frame-rate floor, see
``SHARED_MIN_FPS``).

Screenshots are saved under ``test-artifacts/browser/`` (idle, connected,
connected on a phone-sized screen, disconnected, and each of the three pages).
"""

from __future__ import annotations

import pytest

from tests.browser.pagetools import (
    ARTIFACTS,
    MIN_FPS,
    assert_bot_audio_is_the_tone,
    assert_loopback_only,
    assert_mirrored_bars,
    rtc_stats,
    session_worker,
    wait_for_frame_rate,
    wait_for_stats,
)

pytestmark = pytest.mark.browser

#: The bot's picture, asked for in the page's URL: not the camera's 320x240, so the bot must scale.
SIZE = (480, 360)
#: Three calls at once on two cores: the bot's picture at the camera's size.
SMALL_SIZE = (320, 240)
#: Three calls, their three bots and three browser pages (each encoding and decoding
#: VP8) share two cores: about 15-21 fps each on a quiet machine, 10 while a
#: neighbour runs a benchmark. Half the spec tells a call that flows from one
#: that stalls; the 15 fps spec itself is held by the single-call tests.
SHARED_MIN_FPS = MIN_FPS / 2


def open_demo(new_page, host, size=SIZE):
    """The demo page, asking the bot for a ``size`` picture; records every request it makes."""
    page = new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(f"{host.base_url}/?video_width={size[0]}&video_height={size[1]}")
    return page


def connect(page):
    """Clicks Connect and waits until the bot has said which worker hosts the session."""
    page.click("#connect")
    page.wait_for_function(
        "window.demo.state.status === 'connected' && window.demo.state.workerId !== null", timeout=45_000
    )
    return page.evaluate("window.demo.state")


def chat_round_trip(page, text: str, worker_id: str):
    """Types a chat line; the bot's answer comes back naming the worker."""
    page.fill("#chat-input", text)
    page.click("#chat-send")
    expected = f"{worker_id} heard: {text}"
    page.wait_for_function(
        "(expected) => window.demo.state.chat.some((m) => m.from === 'bot' && m.text === expected)",
        arg=expected,
        timeout=15_000,
    )


def test_demo_page_call(host_factory, new_page, netns):
    assert netns.interfaces() == ["lo"]
    host = host_factory(2)
    page = open_demo(new_page, host)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "demo-page-idle.png")

    state = connect(page)
    stats = rtc_stats(page)
    assert state["connectionState"] == "connected"
    assert stats["connectionState"] == "connected"
    assert_loopback_only(stats)

    # The bot's host-info names the worker the engine placed the session on.
    worker = session_worker(host, state["pcId"])
    assert worker["worker_id"] == state["workerId"]

    wait_for_stats(page, lambda s: (s["inbound"].get("video") or {}).get("framesDecoded", 0) > 0)
    [stats] = wait_for_frame_rate([page], MIN_FPS)
    video = stats["inbound"]["video"]
    assert (video["frameWidth"], video["frameHeight"]) == SIZE, video
    assert page.eval_on_selector("#bot-video", "v => [v.videoWidth, v.videoHeight]") == list(SIZE)
    assert_mirrored_bars(page, "#bot-video")

    assert_bot_audio_is_the_tone(page)
    chat_round_trip(page, "hello from chromium", state["workerId"])

    # The page shows what it measured once its stats tick has run.
    page.wait_for_function("document.querySelector('[data-stat=video]').textContent.includes('×')")
    page.screenshot(path=ARTIFACTS / "demo-page-connected.png")
    # The same call on a phone-sized screen.
    page.set_viewport_size({"width": 400, "height": 860})
    page.screenshot(path=ARTIFACTS / "demo-page-narrow.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})

    page.click("#disconnect")
    host.wait_for(
        lambda workers: any(
            w["worker_id"] == state["workerId"] and not w["sessions"] and not w["reported_sessions"]
            for w in workers
        ),
        timeout=20,
    )
    assert page.evaluate("window.demo.state.status") == "idle"
    page.screenshot(path=ARTIFACTS / "demo-page-disconnected.png")

    foreign = [url for url in page.requests if not url.startswith(host.base_url)]
    assert not foreign, f"the demo page fetched from elsewhere: {foreign}"


def test_three_pages_on_three_workers(host_factory, new_page):
    host = host_factory(3)
    pages = [open_demo(new_page, host, SMALL_SIZE) for _ in range(3)]
    for page in pages:
        page.click("#connect")
    states = []
    for page in pages:
        page.wait_for_function(
            "window.demo.state.status === 'connected' && window.demo.state.workerId !== null", timeout=60_000
        )
        states.append(page.evaluate("window.demo.state"))

    worker_ids = [state["workerId"] for state in states]
    assert len(set(worker_ids)) == 3, f"sessions not spread over the workers: {worker_ids}"
    workers = host.wait_for(lambda ws: ws if all(len(w["sessions"]) == 1 for w in ws) else None)
    assert {w["worker_id"] for w in workers} == set(worker_ids)
    for state in states:
        assert session_worker(host, state["pcId"])["worker_id"] == state["workerId"]

    for page in pages:
        wait_for_stats(page, lambda s: (s["inbound"].get("video") or {}).get("framesDecoded", 0) > 0)
    # All three measured over the same windows, while all three calls run.
    for index, stats in enumerate(wait_for_frame_rate(pages, SHARED_MIN_FPS)):
        assert stats["connectionState"] == "connected", index
        assert_loopback_only(stats)
        video = stats["inbound"]["video"]
        assert (video["frameWidth"], video["frameHeight"]) == SMALL_SIZE, (index, video)
        assert_mirrored_bars(pages[index], "#bot-video")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for index, (page, state) in enumerate(zip(pages, states)):
        assert_bot_audio_is_the_tone(page)
        chat_round_trip(page, f"hello from page {index}", state["workerId"])
        page.screenshot(path=ARTIFACTS / f"three-pages-{index}.png")

    for page in pages:
        page.click("#disconnect")
    host.wait_for(
        lambda ws: len(ws) == 3 and all(not w["sessions"] and not w["reported_sessions"] for w in ws), timeout=20
    )
