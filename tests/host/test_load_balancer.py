"""Two real hosts behind real HAProxy with the shipped config/haproxy.cfg: sessions spread, requests reach their owner.

Each host runs with one worker and a host_id that is its server's name in the
config (``a``, ``b``); HAProxy checks their /readyz every 200 ms (``CHECK_INTER``).
"""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.balancer import SERVER_NAMES, Balancer
from tests.support.client import SignallingError, TestPeer, bars_match
from tests.support.host import SMALL_VIDEO, HostProcess, host_info, request, request_with_headers

ADMIN_TOKEN = "lb-admin"
# A voice session: the demo bot sends no video, the peer none either (cheaper on a shared 2-core machine).
VOICE = {"video": False}
END_OF_CANDIDATES = {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}


@contextlib.contextmanager
def hosts_behind_haproxy(
    haproxy: Path, check_inter: str = "200ms"
) -> Iterator[tuple[Balancer, dict[str, HostProcess]]]:
    """Hosts ``a`` and ``b`` (one worker each) and HAProxy in front of them; their logs printed afterwards."""
    # Room for every session a test makes on one host, so that no host is ever full (and checked down) here.
    env = {"SMALLWEBRTC_HOST_ADMIN_TOKEN": ADMIN_TOKEN, "SMALLWEBRTC_HOST_WORKER_CAPACITY": "8"}
    hosts = {name: HostProcess(1, "--host-id", name, env=env) for name in SERVER_NAMES}
    with contextlib.ExitStack() as stack:
        for host in hosts.values():
            stack.enter_context(host)
        balancer = stack.enter_context(Balancer(haproxy, *addresses(hosts), check_inter=check_inter))
        try:
            yield balancer, hosts
        finally:
            # Shown by pytest when the test fails.
            print("haproxy:", balancer.log()[-6000:])
            for name, host in hosts.items():
                print(f"host {name}:", host.log()[-4000:])


def owner_of(minted_id: str) -> str:
    """The server a pc_id or /start session id names: its first ``-``-separated field, the host_id."""
    return minted_id.partition("-")[0]


def addresses(hosts: dict[str, HostProcess]) -> list[str]:
    """The hosts' addresses, as config/haproxy.cfg takes them (``HOST_A``, ``HOST_B``)."""
    return [f"127.0.0.1:{hosts[name].port}" for name in SERVER_NAMES]


async def assert_served_by_owner(peer: TestPeer, hosts: dict[str, HostProcess]) -> None:
    """The peer's session runs on the host its ids name, its media flows, and its requests reach that host."""
    owner = owner_of(peer.pc_id)
    assert hosts[owner].owns(peer.pc_id)
    if peer.session_id is not None:
        assert owner_of(peer.session_id) == owner
    assert any(peer.pc_id in w["sessions"] for w in hosts[owner].workers_status())
    # The bot that answers runs on the owner's worker.
    assert (await host_info(peer))["worker_id"].startswith(owner + "-")
    if peer.send_video:
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)
    await peer.wait_for_audio(0.5)


async def exit_code(host: HostProcess, timeout: float = 30.0) -> int:
    """The host's exit code, once it exits by itself."""
    deadline = time.monotonic() + timeout
    while host.process.poll() is None:
        assert time.monotonic() < deadline, f"the host did not exit within {timeout} s"
        await asyncio.sleep(0.2)
    return host.process.returncode


async def test_sessions_spread_over_both_hosts_and_every_request_reaches_its_owner(haproxy):
    with hosts_behind_haproxy(haproxy) as (balancer, hosts):
        async with contextlib.AsyncExitStack() as stack:
            # Half call /api/offer (the pc_id routes their later requests), half /start (the session id
            # does), in an order that gives each host some of both as the hosts take turns; the first
            # two send and get video, the others are voice sessions.
            peers = [
                await stack.enter_async_context(
                    TestPeer(balancer.base_url, use_start=use_start, send_video=index < 2)
                )
                for index, use_start in enumerate((False, True, True, False, False, True))
            ]
            for peer in peers:
                # connect() PATCHes the offer's candidates after the answer: a 404 there raises.
                await peer.connect(request_data=SMALL_VIDEO if peer.send_video else VOICE)
            owners = [owner_of(peer.pc_id) for peer in peers]
            assert sorted(set(owners)) == ["a", "b"], owners
            for name, host in hosts.items():
                placed = {pc_id for w in host.workers_status() for pc_id in w["sessions"]}
                assert placed == {peer.pc_id for peer in peers if owner_of(peer.pc_id) == name}

            for peer in peers:
                # Trickled candidates again, then a renegotiation (a POST naming its pc_id): both at the owner.
                status, body = await peer.patch_candidates([*peer.local_candidates(), END_OF_CANDIDATES])
                assert status == 200, body
                await peer.renegotiate()
                await assert_served_by_owner(peer, hosts)
            # restart_pc: a new peer connection under the same pc_id, at its owner, for each kind of route.
            for peer in peers[2:4]:
                await peer.renegotiate(restart_pc=True)
                await assert_served_by_owner(peer, hosts)

        # Ids that name no session: each owner (or any host, for a name no server has) answers 404.
        for pc_id in ("a-1-abcdef-nobody", "b-1-abcdef-nobody", "nobody"):
            status, _ = await request(
                "PATCH", f"{balancer.base_url}/api/offer", json={"pc_id": pc_id, "candidates": [END_OF_CANDIDATES]}
            )
            assert status == 404, pc_id
        offer = {"sdp": "v=0", "type": "offer"}
        status, _ = await request("POST", f"{balancer.base_url}/sessions/b-1-abcdef-nobody/api/offer", json=offer)
        assert status == 404
        # A body too large to search for its pc_id is refused, not sent to a host it may not belong to.
        huge = {"sdp": "x" * 100_000, "type": "offer"}
        status, _ = await request("POST", f"{balancer.base_url}/api/offer", json=huge)
        assert status == 413


async def test_a_drained_host_gets_no_new_session_and_its_own_finish(haproxy):
    with hosts_behind_haproxy(haproxy) as (balancer, hosts):
        async with TestPeer(balancer.base_url) as first, TestPeer(balancer.base_url, use_start=True) as second:
            for peer in (first, second):
                await peer.connect(request_data=SMALL_VIDEO)
            assert {owner_of(first.pc_id), owner_of(second.pc_id)} == {"a", "b"}
            on_a = first if owner_of(first.pc_id) == "a" else second

            status, body = await request(
                "POST", f"{hosts['a'].base_url}/admin/drain", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert (status, body) == (200, {"draining": True, "sessions": 1})
            # At once (a refuses a new session with 503, which HAProxy offers to b), and once a's check fails.
            async with TestPeer(balancer.base_url, use_start=True) as started, TestPeer(balancer.base_url) as offered:
                await started.connect(request_data=SMALL_VIDEO)
                balancer.wait_for_log("Server hosts/a is DOWN")
                await offered.connect(request_data=SMALL_VIDEO)
                assert [owner_of(started.pc_id), owner_of(offered.pc_id)] == ["b", "b"]
                await assert_served_by_owner(offered, hosts)

                # a's own session still reaches a through the balancer: candidates, a renegotiation, its media.
                status, body = await on_a.patch_candidates([END_OF_CANDIDATES])
                assert status == 200, body
                await on_a.renegotiate()
                await assert_served_by_owner(on_a, hosts)
                # Its last session ended, the drained host exits.
                await on_a.close()
                assert await exit_code(hosts["a"]) == 0


async def test_a_killed_host_leaves_new_sessions_to_the_other(haproxy):
    # A check every hour: this balancer still takes the killed host for up, and must find out by connecting.
    with hosts_behind_haproxy(haproxy, check_inter="1h") as (unchecked, hosts):
        async with TestPeer(unchecked.base_url) as before:
            await before.connect(request_data=SMALL_VIDEO)
            killed_name = owner_of(before.pc_id)
            killed = hosts[killed_name]
            survivor = next(name for name in SERVER_NAMES if name != killed_name)
            os.killpg(killed.process.pid, signal.SIGKILL)
            killed.process.wait()

            # Its turn comes round: the refused connection is retried on the other host.
            for use_start in (False, True, False, True):
                async with TestPeer(unchecked.base_url, use_start=use_start) as peer:
                    await peer.connect(request_data=SMALL_VIDEO)
                    assert owner_of(peer.pc_id) == survivor
                    await assert_served_by_owner(peer, hosts)
            # The dead host's session is gone: its requests get an error, and never reach the other host.
            with pytest.raises(SignallingError) as refused:
                await before.renegotiate()
            assert refused.value.status == 503

        # A balancer that checks: it marks the killed host down, and new sessions go to the other.
        with Balancer(haproxy, *addresses(hosts), check_inter="200ms") as checked:
            checked.wait_for_log(f"Server hosts/{killed_name} is DOWN")
            for use_start in (True, False):
                async with TestPeer(checked.base_url, use_start=use_start) as peer:
                    await peer.connect(request_data=SMALL_VIDEO)
                    assert owner_of(peer.pc_id) == survivor
                    await assert_served_by_owner(peer, hosts)

            # No host left: HAProxy answers as a full host does, in JSON, saying when to try again.
            os.killpg(hosts[survivor].process.pid, signal.SIGKILL)
            hosts[survivor].process.wait()
            status, headers, body = await request_with_headers("POST", f"{checked.base_url}/start", json={})
            assert (status, headers["Retry-After"]) == (503, "2")
            assert body == {"detail": "no host can serve this request now"}
        print("haproxy checking:", checked.log()[-4000:])
