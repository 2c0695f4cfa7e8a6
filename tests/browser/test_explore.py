import json, pytest
from tests.browser.pagetools import rtc_stats, wait_for_stats, video_rate, capture_bot_audio
pytestmark = pytest.mark.browser

def test_explore(host_factory, new_page, netns):
    print("ifaces", netns.interfaces())
    host = host_factory(1)
    page = new_page(host.base_url + "/")
    page.screenshot(path="/tmp/exp/idle.png")
    page.click("#connect")
    page.wait_for_function("window.demo.state.connectionState === 'connected'", timeout=30000)
    st = wait_for_stats(page, lambda s: s["inbound"].get("video", {}).get("framesDecoded", 0) > 10)
    print(json.dumps(st, indent=1))
    print(video_rate(page))
    print(capture_bot_audio(page))
    page.wait_for_timeout(1500)
    page.fill("#chat-input", "hello bot")
    page.click("#chat-send")
    page.wait_for_timeout(1500)
    page.screenshot(path="/tmp/exp/connected.png")
    print(page.evaluate("JSON.stringify(window.demo.state)"))
    page.click("#disconnect")
    page.wait_for_timeout(2000)
    print(host.workers_status())
    page.screenshot(path="/tmp/exp/after.png")
    print("\n".join(page.console_lines))
