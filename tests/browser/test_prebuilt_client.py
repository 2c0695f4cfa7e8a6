"""Pipecat's own web client (``pipecat-ai-small-webrtc-prebuilt``, served at ``/client``) against the host.

The page, the RTVI client, the SmallWebRTC transport and its signalling are
Pipecat's code as the package ships it: ``POST /start``, then
``POST``/``PATCH /sessions/{sessionId}/api/offer``, the ``chat`` data channel.

One thing is replaced, and only for this test: the transport's device layer.
It gets the camera and microphone through ``DailyMediaManager`` (daily-js),
whose ``startCamera()`` downloads Daily's call-machine script from the
internet, which this machine cannot reach. The transport module is served to
the browser with its ``new DailyMediaManager(...)`` turned into
``new (window.__plainMediaManager?.(DailyMediaManager) ?? DailyMediaManager)(...)``
(same arguments), and ``plain_media_manager.js`` defines that class on the
same base class, with plain ``getUserMedia()``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.browser.pagetools import (
    ARTIFACTS,
    MIN_FPS,
    assert_bot_audio_is_the_tone,
    assert_loopback_only,
    assert_mirrored_bars,
    session_worker,
    wait_for_frame_rate,
    wait_for_stats,
)

pytestmark = pytest.mark.browser

pytest.importorskip(
    "pipecat_ai_small_webrtc_prebuilt", reason="pipecat-ai-small-webrtc-prebuilt is not installed (test extra)"
)

PLAIN_MEDIA_MANAGER = (Path(__file__).parent / "plain_media_manager.js").read_text()
# In the transport's constructor: `this.mediaManager=t.mediaManager||new yo(` (names minified).
DEVICE_LAYER = re.compile(r"(\.mediaManager=[\w$]+\.mediaManager\|\|new )([\w$]+)\(")
# The bot's default picture (the prebuilt client asks for no size).
BOT_SIZE = (640, 480)


def serve_with_plain_device_layer(page) -> list[tuple[str, int]]:
    """Routes the client's scripts through the device-layer swap; returns (URL, swaps made) of each script changed."""
    patched = []

    def patch(route):
        response = route.fetch()
        body, count = DEVICE_LAYER.subn(
            lambda m: f"{m.group(1)}(window.__plainMediaManager?.({m.group(2)})??{m.group(2)})(", response.text()
        )
        if count:
            patched.append((route.request.url, count))
        route.fulfill(response=response, body=body)

    page.context.add_init_script(PLAIN_MEDIA_MANAGER)
    page.route(re.compile(r"/client/assets/[^/]+\.js$"), patch)
    return patched


def test_prebuilt_client_call(host_factory, new_page):
    host = host_factory(1)
    page = new_page()
    patched = serve_with_plain_device_layer(page)
    exchanges = []

    def on_response(response):
        request = response.request
        if request.method in ("POST", "PATCH") and request.url.startswith(host.base_url):
            exchanges.append((request.method, request.url.removeprefix(host.base_url), request.post_data, response))

    page.on("response", on_response)
    requested = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(f"{host.base_url}/client/")
    camera = page.locator("button:visible:has(svg.lucide-video-off)")
    camera.click()
    page.locator("button:visible:has(svg.lucide-video)").wait_for()
    page.get_by_role("button", name="Connect", exact=True).click()

    # Pipecat's client state, as its own page shows it.
    page.get_by_role("button", name="Disconnect", exact=True).wait_for(timeout=45_000)
    page.get_by_text('"type":"host-info"').first.wait_for(timeout=30_000)
    # Exactly one expression in one script was swapped: the transport's device layer.
    assert [count for _, count in patched] == [1], patched
    assert page.evaluate("window.__mediaManager?.constructor.name") == "PlainMediaManager"

    # Signalling: /start, then the offer and the candidates under /sessions/{sessionId}/api/offer.
    start = next(e for e in exchanges if e[1] == "/start")
    assert json.loads(start[2])["transport"] == "webrtc"
    session_id = start[3].json()["sessionId"]
    offers = [e for e in exchanges if e[1] == f"/sessions/{session_id}/api/offer"]
    assert [e[0] for e in offers][:1] == ["POST"] and "PATCH" in [e[0] for e in offers], [e[:2] for e in exchanges]
    pc_id = offers[0][3].json()["pc_id"]
    assert all(e[3].status == 200 for e in exchanges), [(e[:2], e[3].status) for e in exchanges]
    worker = session_worker(host, pc_id)

    stats = wait_for_stats(page, lambda s: (s["inbound"].get("video") or {}).get("framesDecoded", 0) > 0)
    assert stats["connectionState"] == "connected"
    assert_loopback_only(stats)
    [stats] = wait_for_frame_rate([page], MIN_FPS)
    video = stats["inbound"]["video"]
    assert (video["frameWidth"], video["frameHeight"]) == BOT_SIZE, video
    bot_video = page.locator("video:visible").first
    assert_mirrored_bars(page, "video:visible >> nth=0")
    assert_bot_audio_is_the_tone(page)

    # The client's own text box: its RTVI send-text goes to the bot, which answers it.
    page.locator("input[placeholder='Type message...']:visible").fill("hello from the prebuilt client")
    page.keyboard.press("Enter")
    page.wait_for_function(
        """() => window.__dcMessages.some((m) => {
             const msg = JSON.parse(m.data);
             return msg.type === "server-message" && String(msg.data?.text).includes("heard: hello from the prebuilt client");
           })""",
        timeout=15_000,
    )
    page.get_by_text(worker["worker_id"]).first.wait_for()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    bot_video.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "prebuilt-client-connected.png")

    page.get_by_role("button", name="Disconnect", exact=True).click()
    host.wait_for(
        lambda workers: all(not w["sessions"] and not w["reported_sessions"] for w in workers), timeout=20
    )
    page.get_by_role("button", name="Connect", exact=True).wait_for()

    foreign = [url for url in requested if not url.startswith(host.base_url)]
    assert not foreign, f"the prebuilt client fetched from elsewhere: {foreign}"
