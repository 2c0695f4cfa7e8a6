"""Workers that join over TCP: CurveZMQ keys let the right ones in, across a real network link."""

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.cli import make_keys
from tests.support.client import TestPeer, bars_match
from tests.support.host import REPO, SMALL_VIDEO, HostProcess, free_port, host_info, terminate


@pytest.fixture
def keys(tmp_path):
    """An engine key pair, an accepted worker's key pair, and a stranger's."""
    engine_public, engine_secret = make_keys(str(tmp_path / "engine"), "engine")
    accepted_public, accepted_secret = make_keys(str(tmp_path / "accepted"), "worker-1")
    _, stranger_secret = make_keys(str(tmp_path / "stranger"), "worker-2")
    return {
        "engine_public": engine_public,
        "engine_secret": engine_secret,
        "authorized_dir": str(tmp_path / "accepted"),
        "accepted_secret": accepted_secret,
        "stranger_secret": stranger_secret,
    }


def engine_host(keys: dict, address: str, workers: int = 0, *extra_args: str) -> HostProcess:
    """A host whose engine takes workers over tcp on ``address`` (and runs ``workers`` local ones)."""
    endpoint = f"tcp://{address}:{free_port()}"
    env = {
        "SMALLWEBRTC_HOST_CURVE_SECRET_KEY_FILE": keys["engine_secret"],
        "SMALLWEBRTC_HOST_CURVE_AUTHORIZED_KEYS_DIR": keys["authorized_dir"],
    }
    host = HostProcess(workers, "--engine-endpoint", endpoint, *extra_args, env=env)
    host.endpoint = endpoint
    return host


@contextmanager
def worker(keys: dict, endpoint: str, worker_id: str, secret: str, prefix: tuple[str, ...] = ()):
    """``smallwebrtc-host worker`` joining ``endpoint`` with a key (in a namespace, given a prefix)."""
    log = Path(REPO / "test-artifacts" / f"{worker_id}.log")
    log.parent.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            *prefix, sys.executable, "-m", "engine.cli", "worker", "--engine", endpoint, "--worker-id", worker_id,
            "--curve-secret-key", secret, "--curve-server-key", keys["engine_public"],
        ],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        terminate(process)


async def served_by(host: HostProcess) -> str:
    """The worker that runs a new session, once the peer got its video echoed."""
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1], mirrored=True)
        return (await host_info(peer))["worker_id"]


def assert_refused(host: HostProcess) -> None:
    """Wait for the host to log that it refused a worker's key."""
    deadline = time.monotonic() + 30
    while "refused a worker connection" not in host.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "refused a worker connection" in host.log()


async def test_an_accepted_worker_joins_over_tcp_and_a_stranger_is_refused(keys):
    with engine_host(keys, "127.0.0.1") as host:
        with worker(keys, host.endpoint, "worker-1", keys["accepted_secret"]):
            host.wait_for(lambda ws: [w["worker_id"] for w in ws] == ["worker-1"], timeout=30)
            assert await served_by(host) == "worker-1"

        with worker(keys, host.endpoint, "worker-2", keys["stranger_secret"]):
            assert_refused(host)
            assert all(w["worker_id"] != "worker-2" for w in host.workers_status())


@pytest.mark.parametrize("engines", [1, 2])
async def test_local_workers_join_a_tcp_endpoint_with_keys_of_their_own(keys, engines):
    # The operator authorized no key of theirs: the engine makes one for them. Engine i listens on the port + i.
    with engine_host(keys, "127.0.0.1", 2, "--engines", str(engines)) as host:
        local = {w["worker_id"] for w in host.workers_status()}
        # A local worker's id is its engine's id and its slot.
        assert len(local) == 2 and len({worker_id.rsplit("-w", 1)[0] for worker_id in local}) == engines
        assert await served_by(host) in local

        with worker(keys, host.endpoint, "stranger", keys["stranger_secret"]):
            assert_refused(host)
            assert {w["worker_id"] for w in host.workers_status()} == local


def test_tcp_without_keys_does_not_start():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--engine-endpoint", f"tcp://127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "curve_secret_key_file" in result.stderr


@contextmanager
def network_namespace():
    """A namespace joined to this one by a veth pair: (our address, the namespace's address, ip netns exec prefix)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 10000}"
    namespace, outer, inner = f"swh-ns{tag}", f"swh-a{tag}", f"swh-b{tag}"
    subnet = 10 + os.getpid() % 200

    def ip(*args, netns: str | None = None):
        prefix = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", namespace)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", namespace)
        ip("addr", "add", f"10.213.{subnet}.1/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("addr", "add", f"10.213.{subnet}.2/30", "dev", inner, netns=namespace)
        ip("link", "set", inner, "up", netns=namespace)
        ip("link", "set", "lo", "up", netns=namespace)
    except subprocess.CalledProcessError as e:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        pytest.skip(f"cannot make a network namespace here: {e.stderr.decode(errors='replace').strip()}")
    try:
        yield f"10.213.{subnet}.1", f"10.213.{subnet}.2", ("ip", "netns", "exec", namespace)
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


async def test_a_worker_in_another_network_namespace(keys):
    with network_namespace() as (engine_address, _, in_namespace):
        with engine_host(keys, engine_address) as host:
            with worker(keys, host.endpoint, "worker-1", keys["accepted_secret"], prefix=in_namespace):
                host.wait_for(lambda ws: [w["worker_id"] for w in ws] == ["worker-1"], timeout=30)
                assert await served_by(host) == "worker-1"
            with worker(keys, host.endpoint, "worker-2", keys["stranger_secret"], prefix=in_namespace):
                assert_refused(host)
