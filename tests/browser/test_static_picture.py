"""A bot whose picture does not change (an avatar), in headless Chromium: shown, kept live, no longer encoded.

The bot (``tests/bot_files/static-picture-bot.py``) queues one picture, which
Pipecat repeats at 30 fps. Once the worker has stopped encoding it (after
``video_static_refine_frames``, 30 here), Chromium gets one frame a second
(``video_static_refresh_s``). Over a window after that, from ``inbound-rtp``
stats and the page: a frame or so a second instead of 30, the track still live
and unmuted, the page still showing the bot's picture, and no keyframe asked
for (libwebrtc asks for one after 3 s without a decodable frame, which the
refresh is there to prevent).
"""

from __future__ import annotations

import pytest

from tests.browser.pagetools import video_picture
from tests.support.client import bars_match
from tests.support.host import REPO

pytestmark = pytest.mark.browser

BOT = REPO / "tests" / "bot_files" / "static-picture-bot.py"
WINDOW_S = 8

_VIDEO_IN = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  let video = null;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      video = { framesDecoded: r.framesDecoded ?? 0, pliCount: r.pliCount ?? 0 };
    }
  });
  const track = pc.getTransceivers()[1].receiver.track;
  return { ...video, readyState: track.readyState, muted: track.muted };
}
"""


def frames_decoded_in(page, seconds: float) -> tuple[dict, dict]:
    first = page.evaluate(_VIDEO_IN)
    page.wait_for_timeout(seconds * 1000)
    return first, page.evaluate(_VIDEO_IN)


def test_a_static_picture_is_sent_once_a_second_and_stays_on_screen(host_factory, new_page):
    host = host_factory(1, "--bot", str(BOT), env={"SMALLWEBRTC_HOST_VIDEO_STATIC_REFINE_FRAMES": "30"})
    page = new_page()
    page.goto(host.base_url)
    page.click("#connect")
    page.wait_for_function("window.demo.state.status === 'connected'", timeout=45_000)
    page.wait_for_function("document.querySelector('#bot-video').videoWidth > 0", timeout=30_000)
    # While the encoder sharpens the picture it is sent at 30 fps; then at the refresh's pace.
    for _ in range(30):
        first, last = frames_decoded_in(page, 1)
        if last["framesDecoded"] - first["framesDecoded"] <= 2:
            break
    else:
        pytest.fail(f"the static picture was still sent at {last['framesDecoded'] - first['framesDecoded']} fps")

    first, last = frames_decoded_in(page, WINDOW_S)

    sent = last["framesDecoded"] - first["framesDecoded"]
    assert 1 <= sent <= 2 * WINDOW_S, (
        f"{sent} frames in {WINDOW_S} s of a static picture (30 fps would be {30 * WINDOW_S})"
    )
    assert last["pliCount"] == first["pliCount"], "Chromium asked for a keyframe of the static picture"
    assert (last["readyState"], last["muted"]) == ("live", False)
    assert bars_match(video_picture(page, "#bot-video"))
