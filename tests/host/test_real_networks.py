"""The host on real networks: NAT, a 1:1 NAT with a firewall, TURN over TCP and TLS, a lossy slow path.

Each test builds the namespaces of ``tests.support.netns.NatTopology`` (a
client behind a masquerading NAT, the host behind a 1:1 NAT at
203.0.113.10, a TURN server on the public side), starts the host inside the
host's namespace and calls it with a real aiortc peer run inside the
client's (``tests.support.netns_peer``). Nothing leaves the namespaces.
"""

import contextlib
import json
import subprocess
import sys

import pytest

from tests.support.host import REPO, SMALL_VIDEO, HostProcess
from tests.support.netns import (
    CLIENT_ADDRESS,
    CLIENT_PUBLIC_ADDRESS,
    HOST_ADDRESS,
    HOST_PUBLIC_ADDRESS,
    NatTopology,
    network_tools,
)

PORT_RANGE = (41000, 41009)
#: Seconds of media each call receives once it flows.
CALL_SECONDS = 3.0
#: No call may take longer than this, connecting included.
CALL_TIME_LIMIT_S = 90


@pytest.fixture
def topology():
    """A fresh NAT topology for the test; every namespace and process in it is gone afterwards."""
    network_tools()
    built = NatTopology()
    try:
        yield built
    finally:
        left = built.close()
    assert not left, f"processes were still running in the test's namespaces (killed): {left}"


@contextlib.contextmanager
def host_behind_nat(topology: NatTopology, *args: str):
    """The host, started from inside the host's namespace, serving on every address there."""
    with topology.host.entered():
        host = HostProcess(1, "--host", "0.0.0.0", "--ice-host-addresses", HOST_ADDRESS, *args)
        host.start(timeout=60)
    try:
        yield host
    finally:
        host.stop()


def call_from_client(topology: NatTopology, host: HostProcess, env: dict | None = None) -> dict:
    """One call from the client's namespace to the host's public address; what the client saw (printed too)."""
    command = [
        *topology.client.exec_prefix(),
        sys.executable, "-m", "tests.support.netns_peer", f"http://{HOST_PUBLIC_ADDRESS}:{host.port}",
        "--address", CLIENT_ADDRESS, "--seconds", str(CALL_SECONDS), "--request-data", json.dumps(SMALL_VIDEO),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=CALL_TIME_LIMIT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the call took over {CALL_TIME_LIMIT_S} s:\n{e.stderr}\nhost log:\n{host.log()[-5000:]}") from e
    lines = result.stdout.strip().splitlines()
    described = json.loads(lines[-1]) if lines else {"error": "no output"}
    if result.returncode != 0 or "error" in described:
        raise AssertionError(
            f"the call failed: {described.get('error')}\n{result.stderr[-5000:]}\nhost log:\n{host.log()[-5000:]}"
        )
    print(json.dumps(described, indent=1))
    return described


def assert_media_flowed(call: dict) -> None:
    """Audio and video of the bot's echo arrived throughout the call, with no error in the client."""
    assert call["video_frames_first_half"] > 0, call
    assert call["video_frames"] > call["video_frames_first_half"], call
    assert call["audio_frames"] > 0, call
    assert not call["errors"], call


def test_a_client_behind_nat_reaches_a_host_behind_a_1to1_nat_through_its_port_range_alone(topology):
    first, last = PORT_RANGE
    topology.allow_only_udp_ports(first, last)
    with host_behind_nat(
        topology, "--ice-announced-address", HOST_PUBLIC_ADDRESS, "--ice-udp-port-range", f"{first}-{last}"
    ) as host:
        call = call_from_client(topology, host)

    offered = call["answer_candidates"]
    assert offered, call
    assert all(c["address"] == HOST_PUBLIC_ADDRESS and first <= c["port"] <= last for c in offered), offered
    assert_media_flowed(call)
    # The media went from the client's private address, through its NAT, to the host's public one.
    pair = call["selected_pair"]
    assert pair["local"]["address"] == CLIENT_ADDRESS, pair
    assert pair["remote"]["address"] == HOST_PUBLIC_ADDRESS, pair
    assert CLIENT_PUBLIC_ADDRESS not in (pair["local"]["address"], pair["remote"]["address"])
