"""A web app built on Pipecat's npm packages (``@pipecat-ai/client-js`` and
``@pipecat-ai/small-webrtc-transport``) against the host, in Chromium.

The app (``client_js_app/``: a page, ``main.js``, and the ``package.json`` and
lockfile that pin the packages) is built as its authors would build it:
``npm ci`` from the npm registry, then esbuild bundles it. The build happens
once per change of those files (it is kept in pytest's cache directory), before
the test enters its network namespace. A failed build fails the test, naming
npm's error: a registry that cannot be reached is a failure, not a skip.

The page is served same-origin without changing the host: the browser context
answers requests for ``/client-js-app/`` on the host's origin from the build
(a path the host does not serve), so the app's ``/api/offer`` and its data
channel are the host's own. As for Pipecat's prebuilt clients, the transport's
device layer is swapped in the script as served (see ``pagetools``).

One call, with the test bot that asks its peer for a new offer once connected
(``tests.support.bots``: ``renegotiating``), so that the host asks the app to
renegotiate:

- it connects (``POST /api/offer`` with its request data, no ``/start``) and
  the bot's RTVI ``bot-ready`` and ``host-info`` server message arrive;
- the host's ``renegotiate`` signal gets a new offer under the same ``pc_id``;
- the bot's audio is the microphone's tone, its video the camera's bars,
  mirrored, at the frame rate the other browser tests ask;
- an RTVI client request is answered by the bot (a server response naming its
  worker);
- an ICE failure (the transport's own ``iceconnectionstatechange`` handler,
  told the state is ``failed``) makes the transport rebuild its peer connection
  with ``restart_pc``: same ``pc_id``, same bot on the same worker, audio and
  video and messages again on the new connection (the page helps the
  transport's restart along with two things of the client's own making, see
  ``_RESUME_AFTER_RESTART``);
- Disconnect ends the session; no request left the host's origin.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.browser.pagetools import (
    ARTIFACTS,
    MIN_FPS,
    PLAIN_MEDIA_MANAGER,
    assert_bot_audio_is_the_tone,
    assert_loopback_only,
    assert_mirrored_bars,
    rtc_stats,
    session_worker,
    wait_for_frame_rate,
    wait_for_stats,
    with_plain_device_layer,
)

pytestmark = pytest.mark.browser

SOURCE = Path(__file__).parent / "client_js_app"
#: Where the page lives on the host's origin: a path the host does not serve.
APP_PATH = "/client-js-app/"
#: The bot's picture (the demo bot's default size).
BOT_SIZE = (640, 480)

# Tells the transport, through its own event handler, that ICE failed on its current connection.
_FAIL_ICE = """
() => {
  const pc = window.__pcs.at(-1);
  Object.defineProperty(pc, "iceConnectionState", { get: () => "failed" });
  pc.dispatchEvent(new Event("iceconnectionstatechange"));
}
"""

# What the app needs after the transport restarted its peer connection
# (small-webrtc-transport 1.10.8), neither being the host's doing:
# - closing the old connection, the transport stops its senders' tracks, which
#   are the devices' tracks it has just given the new connection too: the app
#   selects its microphone and camera again (client-js's own calls);
# - the old received tracks' "ended" handler forgets the new ones, so the app
#   may never hear of the new connection's tracks (onTrackStarted): the page
#   plays them itself.
_RESUME_AFTER_RESTART = """
async () => {
  const client = app.client;
  await Promise.all([client.updateMic(client.selectedMic.deviceId), client.updateCam(client.selectedCam.deviceId)]);
  const [audio, video] = window.__pcs.at(-1).getReceivers().map((receiver) => receiver.track);
  document.getElementById("bot-audio").srcObject = new MediaStream([audio]);
  document.getElementById("bot-video").srcObject = new MediaStream([video]);
}
"""


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed ({result.returncode}) building the client-js app; "
            f"is the npm registry reachable?\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def client_js_app(npm, pytestconfig, tmp_path_factory) -> Path:
    """The built app (``index.html``, ``app.js``), built with npm unless this version of it already was."""
    sources = sorted(path for path in SOURCE.iterdir() if path.is_file())
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    cache = pytestconfig.cache.mkdir("client-js-app") if pytestconfig.cache else tmp_path_factory.mktemp("client-js-app")
    built = cache / digest.hexdigest()[:16]
    if not built.exists():
        # Earlier versions' builds go; this one is moved in whole once it is complete.
        for old in cache.iterdir():
            shutil.rmtree(old)
        work = cache / "building"
        work.mkdir()
        for path in sources:
            shutil.copy(path, work)
        _run([npm, "ci", "--no-audit", "--no-fund"], work)
        _run([npm, "run", "build"], work)
        (work / "dist").rename(built)
        shutil.rmtree(work)
    return built


def serve_app(page, host, built: Path) -> list[int]:
    """Answers the page's requests under ``APP_PATH`` from the build; returns the device-layer swaps made per script."""
    swaps = []
    prefix = host.base_url + APP_PATH

    def fulfil(route):
        path = built / route.request.url.removeprefix(prefix).split("?")[0]
        if not path.is_file():
            route.fulfill(status=404)
            return
        body = path.read_text()
        if path.suffix == ".js":
            body, count = with_plain_device_layer(body)
            swaps.append(count)
        content_type = "text/javascript" if path.suffix == ".js" else "text/html"
        route.fulfill(body=body, content_type=content_type)

    page.context.add_init_script(PLAIN_MEDIA_MANAGER)
    page.route(f"{prefix}**", fulfil)
    return swaps


def record_offers(page, host) -> list:
    """Keeps every ``POST /api/offer`` the page makes, with its response, in order."""
    offers = []

    def on_response(response):
        request = response.request
        if request.method == "POST" and request.url == f"{host.base_url}/api/offer":
            offers.append((request.post_data_json, response))

    page.on("response", on_response)
    return offers


def wait_for_offer(page, offers: list, predicate, timeout: float = 30.0) -> dict:
    """The first recorded offer whose request body satisfies ``predicate``; checks it was answered."""
    deadline = time.monotonic() + timeout
    while not (found := [(body, response) for body, response in offers if predicate(body)]):
        if time.monotonic() > deadline:
            raise AssertionError(f"no such offer within {timeout} s; offers: {[body for body, _ in offers]}")
        page.wait_for_timeout(100)
    body, response = found[0]
    assert response.status == 200, (body, response.status, response.text())
    return response.json()


def wait_for_media(page) -> dict:
    """The bot's video at the frame rate asked and its audio the tone, on the page's current peer connection."""
    stats = wait_for_stats(page, lambda s: (s["inbound"].get("video") or {}).get("framesDecoded", 0) > 0)
    assert stats["connectionState"] == "connected"
    assert_loopback_only(stats)
    [stats] = wait_for_frame_rate([page], MIN_FPS)
    video = stats["inbound"]["video"]
    assert (video["frameWidth"], video["frameHeight"]) == BOT_SIZE, video
    assert_mirrored_bars(page, "#bot-video")
    assert_bot_audio_is_the_tone(page)
    return stats


def test_client_js_app_connects_renegotiates_and_restarts(client_js_app, host_factory, new_page):
    host = host_factory(1, "--bot", "tests.support.bots:bot")
    page = new_page()
    swaps = serve_app(page, host, client_js_app)
    offers = record_offers(page, host)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{host.base_url}{APP_PATH}index.html")

    bot_ready = page.evaluate("app.connect({bot: 'renegotiating'})")
    assert bot_ready["about"]["library"] == "pipecat-ai", bot_ready
    assert swaps == [1], swaps
    assert page.evaluate("window.__mediaManager?.constructor.name") == "PlainMediaManager"
    answer = wait_for_offer(page, offers, lambda body: body["pc_id"] is None)
    pc_id = answer["pc_id"]
    assert offers[0][0]["requestData"] == {"bot": "renegotiating"}
    worker_id = session_worker(host, pc_id)["worker_id"]
    page.wait_for_function(
        "(workerId) => app.serverMessages.some((m) => m.type === 'host-info' && m.worker_id === workerId)",
        arg=worker_id,
    )

    # The bot asks for a new offer: the app's keeps the pc_id.
    page.wait_for_function(
        "() => window.__dcMessages.some((m) => JSON.parse(m.data).message?.type === 'renegotiate')"
    )
    renegotiated = wait_for_offer(page, offers, lambda body: body["pc_id"] == pc_id and not body["restart_pc"])
    assert renegotiated["pc_id"] == pc_id
    wait_for_media(page)
    assert page.evaluate("app.ask('hello from client-js')") == {"text": f"{worker_id} heard: hello from client-js"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "client-js-app-connected.png")

    # After an ICE failure the transport rebuilds its peer connection under the same pc_id.
    connections = page.evaluate("window.__pcs.length")
    page.evaluate(_FAIL_ICE)
    restarted = wait_for_offer(page, offers, lambda body: body["pc_id"] == pc_id and body["restart_pc"])
    assert restarted["pc_id"] == pc_id
    assert page.evaluate("window.__pcs.length") == connections + 1
    page.evaluate(_RESUME_AFTER_RESTART)
    wait_for_media(page)
    assert rtc_stats(page, connections - 1)["connectionState"] == "closed"
    assert page.evaluate("app.ask('hello again')") == {"text": f"{worker_id} heard: hello again"}
    log = host.log()
    assert f"peer {pc_id}: restarting the peer connection" in log
    assert log.count(f"session {pc_id} started") == 1, "the bot did not carry on"

    page.evaluate("app.disconnect()")
    host.wait_for(lambda workers: all(not w["sessions"] and not w["reported_sessions"] for w in workers), 20)
    assert not page.evaluate("app.errors"), page.evaluate("app.errors")
    foreign = [url for url in requested if not url.startswith(host.base_url)]
    assert not foreign, f"the app fetched from elsewhere: {foreign}"
