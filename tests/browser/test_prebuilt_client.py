"""Pipecat's prebuilt web clients, served by the host at ``/client``, in a call with the demo bot.

Two packages ship that client, and the host serves whichever is installed:

- ``pipecat-ai-prebuilt`` (the "Pipecat Playground"), what pipecat-ai's
  development runner serves, and a dependency of this host;
- ``pipecat-ai-small-webrtc-prebuilt``, its SmallWebRTC-only predecessor,
  served where it is installed instead. Its test runs the host from a
  virtual environment that has every package of this one's but
  ``pipecat-ai-prebuilt`` (its ``site-packages`` links to ours, one
  distribution left out), so the host finds only the older client.

The page, the RTVI client, the SmallWebRTC transport and its signalling are
Pipecat's code as the package ships it: ``POST /start``, then
``POST``/``PATCH /sessions/{sessionId}/api/offer``, the ``chat`` data channel.

One thing is replaced, and only for these tests: the transport's device layer
(daily-js, which downloads its code from the internet; see ``pagetools``), in
the client's scripts as they are served to the browser.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser.pagetools import (
    ARTIFACTS,
    MIN_FPS,
    PLAIN_MEDIA_MANAGER,
    assert_bot_audio_is_the_tone,
    assert_loopback_only,
    assert_mirrored_bars,
    session_worker,
    wait_for_frame_rate,
    wait_for_stats,
    with_plain_device_layer,
)
from tests.support.host import HostProcess

pytestmark = pytest.mark.browser

# The bot's default picture (the prebuilt clients ask for no size).
BOT_SIZE = (640, 480)


@dataclass(frozen=True)
class PrebuiltClient:
    """One prebuilt client package and the parts of its page the test uses."""

    distribution: str
    #: Its StaticFiles app, as the host mounts it: (module, attribute).
    app: tuple[str, str]
    #: Turns the camera on (both start with it off) and waits until it is.
    turn_on_camera: Callable
    #: The chat box, whose text goes to the bot as RTVI ``send-text``.
    chat_box: Callable

    def index_html(self) -> str:
        """The client's page, as the package ships it."""
        module, attribute = self.app
        directory = getattr(importlib.import_module(module), attribute).directory
        return (Path(directory) / "index.html").read_text()


def _playground_camera_on(page) -> None:
    page.get_by_role("button", name="Turn on camera").click()
    page.get_by_role("button", name="Turn off camera").wait_for()


def _small_webrtc_camera_on(page) -> None:
    page.locator("button:visible:has(svg.lucide-video-off)").click()
    page.locator("button:visible:has(svg.lucide-video)").wait_for()


PLAYGROUND = PrebuiltClient(
    "pipecat-ai-prebuilt",
    ("pipecat_ai_prebuilt.frontend", "PipecatPrebuiltUI"),
    _playground_camera_on,
    lambda page: page.get_by_role("textbox", name="Message"),
)
SMALL_WEBRTC_PREBUILT = PrebuiltClient(
    "pipecat-ai-small-webrtc-prebuilt",
    ("pipecat_ai_small_webrtc_prebuilt.frontend", "SmallWebRTCPrebuiltUI"),
    _small_webrtc_camera_on,
    lambda page: page.locator("input[placeholder='Type message...']:visible"),
)


def python_without(distribution: str, folder: Path) -> Path:
    """A Python that sees every package this one does but ``distribution``, as if it were not installed.

    A virtual environment whose ``site-packages`` holds a link to each entry of
    ours except that distribution's files and metadata.
    """
    installed = importlib.metadata.distribution(distribution)
    site_packages = Path(installed.locate_file(""))
    left_out = {Path(file).parts[0] for file in installed.files or ()}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = folder / "lib" / version / "site-packages"
    for entry in site_packages.iterdir():
        if entry.name not in left_out:
            (target / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


def serve_with_plain_device_layer(page) -> list[tuple[str, int]]:
    """Routes the client's scripts through the device-layer swap; returns (URL, swaps made) of each script changed."""
    patched = []

    def patch(route):
        response = route.fetch()
        body, count = with_plain_device_layer(response.text())
        if count:
            patched.append((route.request.url, count))
        route.fulfill(response=response, body=body)

    page.context.add_init_script(PLAIN_MEDIA_MANAGER)
    page.route(re.compile(r"/client/assets/[^/]+\.js$"), patch)
    return patched


def prebuilt_client_call(
    hosts: Sequence[HostProcess], new_page, client: PrebuiltClient, screenshot: str, base_url: str = ""
) -> HostProcess:
    """A whole call through the client the hosts serve, which must be ``client``; returns the host the session ran on.

    Args:
        hosts: The hosts; the session may land on any of them.
        new_page: The ``new_page`` fixture.
        client: The prebuilt client the hosts serve.
        screenshot: The file name of the screenshot of the call.
        base_url: Where the browser calls (a load balancer); by default the only host.
    """
    base_url = base_url or hosts[0].base_url
    with urllib.request.urlopen(f"{base_url}/client/", timeout=10) as response:
        assert response.read().decode() == client.index_html(), f"/client is not {client.distribution}'s page"

    page = new_page()
    patched = serve_with_plain_device_layer(page)
    exchanges = []

    def on_response(response):
        request = response.request
        if request.method in ("POST", "PATCH") and request.url.startswith(base_url):
            exchanges.append((request.method, request.url.removeprefix(base_url), request.post_data, response))

    page.on("response", on_response)
    requested = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(f"{base_url}/client/")
    client.turn_on_camera(page)
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
    assert [e[0] for e in offers][:1] == ["POST"], [e[:2] for e in exchanges]
    pc_id = offers[0][3].json()["pc_id"]
    assert all(e[3].status == 200 for e in exchanges), [(e[:2], e[3].status) for e in exchanges]
    host = next(h for h in hosts if h.owns(pc_id))
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
    client.chat_box(page).fill(f"hello from {client.distribution}")
    page.keyboard.press("Enter")
    page.wait_for_function(
        """(text) => window.__dcMessages.some((m) => {
             const msg = JSON.parse(m.data);
             return msg.type === "server-message" && String(msg.data?.text).includes(`heard: ${text}`);
           })""",
        arg=f"hello from {client.distribution}",
        timeout=15_000,
    )
    page.get_by_text(worker["worker_id"]).first.wait_for()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    bot_video.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / screenshot)

    page.get_by_role("button", name="Disconnect", exact=True).click()
    host.wait_for(
        lambda workers: all(not w["sessions"] and not w["reported_sessions"] for w in workers), timeout=20
    )
    page.get_by_role("button", name="Connect", exact=True).wait_for()

    foreign = [url for url in requested if not url.startswith(base_url)]
    assert not foreign, f"the prebuilt client fetched from elsewhere: {foreign}"
    return host


def test_pipecat_prebuilt_client_call(host_factory, new_page):
    prebuilt_client_call([host_factory(1)], new_page, PLAYGROUND, "pipecat-prebuilt-client-connected.png")


def test_small_webrtc_prebuilt_client_call_where_it_is_the_one_installed(host_factory, new_page, tmp_path):
    python = python_without(PLAYGROUND.distribution, tmp_path / "venv")
    host = host_factory(1, program=(str(python), "-m", "engine.cli"))
    prebuilt_client_call([host], new_page, SMALL_WEBRTC_PREBUILT, "small-webrtc-prebuilt-client-connected.png")
