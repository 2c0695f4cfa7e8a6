"""The host on real networks: NAT, a 1:1 NAT with a firewall, TURN over TCP and TLS, a lossy slow path.

Each test builds the namespaces of ``tests.support.netns.NatTopology`` (a
client behind a masquerading NAT, the host behind a 1:1 NAT at
203.0.113.10, a TURN server on the public side), starts the host inside the
host's namespace and calls it with a real aiortc peer run inside the
client's (``tests.support.netns_peer``). Nothing leaves the namespaces.
"""

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aioice.stun
import aioice.turn
import pytest

from engine.ice import turn_credentials
from tests.support.debian import debian_tool
from tests.support.host import REPO, SMALL_VIDEO, HostProcess, terminate
from tests.support.netns import (
    CLIENT_ADDRESS,
    CLIENT_PUBLIC_ADDRESS,
    HOST_ADDRESS,
    HOST_PUBLIC_ADDRESS,
    TURN_ADDRESS,
    Impairment,
    NatTopology,
    network_tools,
)

TURNSERVER = Path("/usr/bin/turnserver")
OPENSSL = Path("/usr/bin/openssl")
TURN_PORT = 3478
TURNS_PORT = 5349
PORT_RANGE = (41000, 41009)
#: Seconds of media each call receives once it flows.
CALL_SECONDS = 3.0
#: Seconds of media of the call over a lossy path: enough for losses, NACKs and keyframe requests to show.
LOSSY_CALL_SECONDS = 6.0
#: What the lossy call's test prints.
FIGURES = (
    "connected_after_s", "video_fps", "audio_frames_per_s", "nacks_sent", "packets_nacked", "plis_sent",
    "nacks_received", "plis_received", "video_after_keyframe_requests", "rtp",
)  # fmt: skip
#: No call may take longer than this, connecting included.
CALL_TIME_LIMIT_S = 90


def _topology(impairment: Impairment | None = None):
    network_tools()
    built = NatTopology(impairment)
    try:
        yield built
    finally:
        left = built.close()
    assert not left, f"processes were still running in the test's namespaces (killed): {left}"


@pytest.fixture
def topology():
    """A fresh NAT topology for the test; every namespace and process in it is gone afterwards."""
    yield from _topology()


@pytest.fixture
def lossy_topology():
    """The topology with a path between the NATs that loses 5% of the frames each way and delays them 100 ms."""
    yield from _topology(Impairment(loss=0.05, delay_ms=100))


@dataclass
class TurnServer:
    """coturn running in the topology's ``turn`` namespace with ``use-auth-secret``."""

    secret: str
    certificate: Path
    log_file: Path

    def log(self) -> str:
        """What coturn logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@pytest.fixture
def turn_server(topology, tmp_path):
    """Debian's coturn (installed if missing) on 192.0.2.2: TURN on 3478 (UDP, TCP), TURN over TLS on 5349.

    It takes only time-limited credentials minted from its shared secret, and
    its TLS certificate is self-signed for its address (``certificate``).
    """
    debian_tool(TURNSERVER, "coturn")
    debian_tool(OPENSSL, "openssl")
    key, certificate = tmp_path / "turn.key", tmp_path / "turn.pem"
    subprocess.run(
        [str(OPENSSL), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", "/CN=turn.test",
         "-addext", f"subjectAltName=IP:{TURN_ADDRESS}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server = TurnServer(secrets.token_hex(16), certificate, tmp_path / "turnserver.log")
    process = topology.turn.popen(
        str(TURNSERVER), "-n", "--verbose", "--no-cli", "--no-dtls", "--fingerprint", "--realm", "turn.test",
        "--listening-ip", TURN_ADDRESS, "--relay-ip", TURN_ADDRESS,
        "--listening-port", str(TURN_PORT), "--tls-listening-port", str(TURNS_PORT),
        "--min-port", "49152", "--max-port", "49200",
        "--use-auth-secret", "--static-auth-secret", server.secret,
        "--cert", str(certificate), "--pkey", str(key),
        "--userdb", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "turnserver.pid"),
        "--log-file", str(server.log_file), "--simple-log", "--no-stdout-log",
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with topology.turn.entered():
            wait_for_tcp(TURN_ADDRESS, TURNS_PORT, process, server.log)
        yield server
    finally:
        terminate(process)


def wait_for_tcp(address: str, port: int, process: subprocess.Popen, log, timeout: float = 30.0) -> None:
    """Wait until ``process`` accepts TCP connections on ``address``:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing accepts on {address}:{port} after {timeout} s:\n{log()[-3000:]}")


@contextlib.contextmanager
def host_behind_nat(topology: NatTopology, *args: str, env: dict | None = None):
    """The host, started from inside the host's namespace, serving on every address there, its port range alone open."""
    first, last = PORT_RANGE
    topology.allow_only_udp_ports(first, last)
    with topology.host.entered():
        host = HostProcess(
            1, "--host", "0.0.0.0", "--ice-host-addresses", HOST_ADDRESS,
            "--ice-announced-address", HOST_PUBLIC_ADDRESS, "--ice-udp-port-range", f"{first}-{last}",
            *args, env=env,
        )  # fmt: skip
        host.start(timeout=60)
    try:
        yield host
    finally:
        host.stop()


def call_from_client(
    topology: NatTopology, host: HostProcess, env: dict | None = None, seconds: float = CALL_SECONDS
) -> dict:
    """One call from the client's namespace to the host's public address; what the client saw (printed too)."""
    command = [
        *topology.client.exec_prefix(),
        sys.executable, "-m", "tests.support.netns_peer", f"http://{HOST_PUBLIC_ADDRESS}:{host.port}",
        "--address", CLIENT_ADDRESS, "--seconds", str(seconds), "--request-data", json.dumps(SMALL_VIDEO),
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


def frame_metrics(host: HostProcess) -> dict[str, float]:
    """The host's frame counters (``smallwebrtc_frames_total``, ``smallwebrtc_frames_dropped_total``)."""
    with urllib.request.urlopen(f"{host.base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith(("smallwebrtc_frames_total", "smallwebrtc_frames_dropped_total"))
    }


def assert_media_flowed(call: dict) -> None:
    """Audio and video of the bot's echo arrived during the call, with no error in the client."""
    assert call["video_frames"] > 0, call
    assert call["audio_frames"] > 0, call
    assert not call["errors"], call


def test_a_client_behind_nat_reaches_a_host_behind_a_1to1_nat_through_its_port_range_alone(topology):
    with host_behind_nat(topology) as host:
        call = call_from_client(topology, host)

    first, last = PORT_RANGE
    offered = call["answer_candidates"]
    assert offered, call
    assert all(c["address"] == HOST_PUBLIC_ADDRESS and first <= c["port"] <= last for c in offered), offered
    assert_media_flowed(call)
    # The media went from the client's private address, through its NAT, to the host's public one.
    pair = call["selected_pair"]
    assert pair["local"]["address"] == CLIENT_ADDRESS, pair
    assert pair["remote"]["address"] == HOST_PUBLIC_ADDRESS, pair
    assert CLIENT_PUBLIC_ADDRESS not in (pair["local"]["address"], pair["remote"]["address"])


@pytest.mark.parametrize(
    "url",
    [f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=tcp", f"turns:{TURN_ADDRESS}:{TURNS_PORT}?transport=tcp"],
    ids=["tcp", "tls"],
)
def test_with_udp_blocked_the_call_goes_through_coturn_with_credentials_minted_at_start(topology, turn_server, url):
    topology.block_client_udp()
    # Both ends check coturn's self-signed certificate (TURN over TLS): they are told to trust it.
    trust = {"SSL_CERT_FILE": str(turn_server.certificate)}
    ttl_s = 600
    with host_behind_nat(
        topology, "--ice-servers", url, env={**trust, "SMALLWEBRTC_HOST_TURN_SHARED_SECRET": turn_server.secret,
                                             "SMALLWEBRTC_HOST_TURN_CREDENTIAL_TTL_S": str(ttl_s)},
    ) as host:  # fmt: skip
        started = time.time()
        call = call_from_client(topology, host, env={**os.environ, **trust})

    (server,) = call["ice_servers"]
    assert server["urls"] == url
    expiry, _, user = server["username"].partition(":")
    assert started + ttl_s - 60 <= int(expiry) <= time.time() + ttl_s and user, server
    assert_media_flowed(call)
    # The client's only way out was its relay on coturn, reached over TCP (or TLS): coturn took the minted credential.
    assert call["selected_pair"]["local"]["type"] == "relay", call["selected_pair"]
    assert call["selected_pair"]["local"]["address"] == TURN_ADDRESS, call["selected_pair"]
    # coturn allocated it for the minted username, on the TCP (or TLS) port, to a connection from the client's NAT.
    port = TURNS_PORT if url.startswith("turns:") else TURN_PORT
    log = turn_server.log()
    assert f"user <{server['username']}>: incoming packet ALLOCATE processed, success" in log, log[-5000:]
    session = f"user <{server['username']}> realm <turn.test> origin <>, local {TURN_ADDRESS}:{port}"
    assert f"{session}, remote {CLIENT_PUBLIC_ADDRESS}:" in log, log[-5000:]


def test_coturn_refuses_minted_credentials_once_expired_or_minted_from_another_secret(topology, turn_server):
    good = turn_credentials(turn_server.secret, 600, "client")
    expired = turn_credentials(turn_server.secret, -60, "client")
    forged = turn_credentials("another secret", 600, "client")

    async def allocate(username: str, credential: str) -> str:
        try:
            transport, _ = await asyncio.wait_for(
                aioice.turn.create_turn_endpoint(
                    asyncio.DatagramProtocol, (TURN_ADDRESS, TURN_PORT), username, credential, transport="tcp"
                ),
                20,
            )
        except aioice.stun.TransactionFailed as e:
            return f"refused: {e.response.attributes['ERROR-CODE']}"
        transport.close()
        return "allocated"

    async def allocate_each() -> list[str]:
        return [await allocate(*credentials) for credentials in (good, expired, forged)]

    with topology.client.entered():
        outcomes = asyncio.run(allocate_each())
    assert outcomes == ["allocated", "refused: (401, 'Unauthorized')", "refused: (401, 'Unauthorized')"], outcomes


def test_over_a_lossy_slow_path_media_keeps_flowing_and_video_recovers(lossy_topology):
    with host_behind_nat(lossy_topology) as host:
        call = call_from_client(lossy_topology, host, seconds=LOSSY_CALL_SECONDS)
        with lossy_topology.host.entered():
            metrics = frame_metrics(host)
    wire = lossy_topology.stop_wire()
    figures = {key: call[key] for key in FIGURES}
    print(f"5% loss, 100 ms each way: {json.dumps(figures)}; wire: {json.dumps(wire)}; host: {json.dumps(metrics)}")

    assert all(direction["dropped"] for direction in wire.values()), wire
    assert_media_flowed(call)
    # Lost packets were asked for again, both ways, and the picture came back after the keyframe requests.
    assert call["nacks_sent"] and call["nacks_received"], figures
    assert call["keyframe_requests"] and call["video_after_keyframe_requests"], figures
