"""Several engines behind one address, run for real: each request reaches the engine that owns its peer."""

import json
import os
import signal
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import TestPeer, bars_match
from tests.support.host import (
    SMALL_VIDEO,
    HostProcess,
    get_json,
    host_info,
    process_alive,
)


@pytest.fixture(scope="module")
def host():
    with HostProcess(2, "--engines", "2") as running:
        yield running
        print(running.log()[-6000:])


async def test_sessions_go_round_the_engines_and_stay_with_their_own(host):
    workers = host.workers_status()
    assert len({w["engine_id"] for w in workers}) == 2
    async with TestPeer(host.base_url) as first, TestPeer(host.base_url, use_start=True) as second:
        await first.connect(request_data=SMALL_VIDEO)
        await second.connect(request_data=SMALL_VIDEO)
        owners = {peer.pc_id: next(w["engine_id"] for w in workers if peer.pc_id.startswith(w["engine_id"])) for peer in (first, second)}
        assert len(set(owners.values())) == 2
        for peer in (first, second):
            # Trickled candidates (PATCH) and a renegotiation reach the owner.
            await peer.renegotiate()
            frames = await peer.wait_for_video_frames(5)
            assert bars_match(frames[-1][1], mirrored=True)
            info = await host_info(peer)
            assert info["worker_id"].startswith(owners[peer.pc_id])

        status = host.workers_status()
        assert sorted(sum(len(w["sessions"]) for w in status if w["engine_id"] == e) for e in set(owners.values())) == [1, 1]
        metrics = urllib.request.urlopen(f"{host.base_url}/metrics", timeout=5).read().decode()
        active = {
            s.labels["engine"]: s.value
            for f in text_string_to_metric_families(metrics) if f.name == "smallwebrtc_sessions_active"
            for s in f.samples
        }
        assert active == {engine_id: 1.0 for engine_id in owners.values()}
        assert get_json(f"{host.base_url}/readyz") == {"ready": True}


async def test_an_unknown_pc_id_or_session_is_404(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        peer.pc_id = "nobody-" + peer.pc_id
        status, _ = await peer.patch_candidates([{"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}])
        assert status == 404
    request = urllib.request.Request(
        f"{host.base_url}/sessions/no-such-session/api/offer", data=json.dumps({"sdp": "v=0", "type": "offer"}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 404


async def test_an_engine_that_dies_is_restarted_and_the_others_carry_on(host):
    engines = get_json(f"{host.base_url}/workers")["engines"]
    victim = engines[0]
    os.kill(int(victim.split("-")[-2]), signal.SIGKILL)  # engine ids are hostname-pid-suffix
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        assert not peer.pc_id.startswith(victim)
        await peer.wait_for_video_frames(3)
    # Restarted after the supervisor's first delay, under a new id.
    restarted = host.wait_for(lambda _: len(e := get_json(f"{host.base_url}/workers")["engines"]) == 2 and victim not in e and e, 30)
    assert engines[1] in restarted


def test_the_demo_page_is_served_and_a_stop_ends_every_engine():
    with HostProcess(2, "--engines", "2") as running:
        with urllib.request.urlopen(f"{running.base_url}/", timeout=5) as page:
            assert b"<html" in page.read().lower()
        pids = list(running.worker_pids().values())
        assert running.stop() == 0
    assert not any(process_alive(pid) for pid in pids)
