import json, re, pytest
from pathlib import Path
from tests.browser.pagetools import rtc_stats, wait_for_stats, video_rate, capture_bot_audio
pytestmark = pytest.mark.browser
JS = (Path(__file__).parent / "plain_media_manager.js").read_text()
PAT = re.compile(r"(\.mediaManager=(\w+)\.mediaManager\|\|new )([\w$]+)\(")

def test_explore(host_factory, new_page, netns):
    host = host_factory(1)
    page = new_page()
    page.context.add_init_script(JS)
    reqs = []
    page.on("request", lambda r: reqs.append(f"{r.method} {r.url} {r.post_data or ''}"[:300]))
    def patch(route):
        resp = route.fetch()
        body = resp.text()
        new, n = PAT.subn(lambda m: f"{m.group(1)}(window.__plainMediaManager?.({m.group(3)})??{m.group(3)})(", body)
        route.fulfill(response=resp, body=new)
    page.route(re.compile(r".*/client/assets/index\.module-.*\.js$"), patch)
    page.goto(host.base_url + "/client/")
    page.wait_for_timeout(2000)
    btns = page.locator("button")
    for i in range(btns.count()):
        b = btns.nth(i)
        print(i, b.get_attribute("aria-label"), b.get_attribute("title"), repr(b.inner_text()[:40]), b.get_attribute("class")[:80] if b.get_attribute("class") else None)
    print(page.evaluate("""() => [...document.querySelectorAll('button')].map((b,i)=>i+' vis='+(b.offsetParent!==null)+' '+(b.querySelector('svg')?.getAttribute('class')||'')+' '+b.innerText.slice(0,20)).join('\\n')"""))
    page.get_by_role("button", name="Connect").click()
    page.wait_for_timeout(8000)
    page.screenshot(path="/tmp/exp/pre-conn.png")
    print(json.dumps(rtc_stats(page))[:1500])
    print(page.evaluate("window.__dcMessages"))
    print("\n".join(reqs)); print("\n".join(page.console_lines[-40:]))
