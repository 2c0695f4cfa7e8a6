"""Every Pipecat bot runs here: bots written for Pipecat's runner, unchanged, on the real host; and a bot of the host's under Pipecat's own runner.

``tests/bot_files/echo-bot.py`` is a user's bot file as Pipecat's examples
write it: it asks Pipecat for its transport (``create_transport()``, or
Pipecat's own ``SmallWebRTCTransport`` built by hand) and sends back what it
gets. ``tests/support/runner_bot.py`` imports the host's transport instead.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from pipecat.runner.types import SmallWebRTCRunnerArguments

from tests.support.client import TestPeer, bars_match, dominant_frequency
from tests.support.host import REPO, HostProcess, free_port, terminate

ECHO_BOT = REPO / "tests" / "bot_files" / "echo-bot.py"
BODY = {"user": "someone"}
RUNNER_START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def host_in_a_bot_project(tmp_path_factory):
    """The host started with no bot configured, in a directory whose ``bot.py`` is the echo bot."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ECHO_BOT, project / "bot.py")
    with HostProcess(1, cwd=project) as running:
        yield running
        print(running.log()[-6000:])


@pytest.fixture(scope="module")
def host_of_a_bot_file():
    """The host started with ``--bot`` a file path relative to where it runs."""
    with HostProcess(1, "--bot", str(ECHO_BOT.relative_to(REPO))) as running:
        yield running
        print(running.log()[-6000:])


async def hello_and_echoes(peer: TestPeer) -> dict:
    """What the echo bot says when the peer connects; its audio, video and app messages come back."""
    hello = await peer.wait_for_message(lambda m: "transport" in m)
    audio = await peer.wait_for_audio(1.0)
    assert abs(dominant_frequency(audio, 48000) - 440) < 5
    frames = await peer.wait_for_video_frames(5)
    assert bars_match(frames[-1][1])
    await peer.send_app_message({"hello": [1, 2]})
    assert await peer.wait_for_message(lambda m: "echo" in m) == {"echo": {"hello": [1, 2]}}
    return hello


async def test_the_bot_py_of_the_directory_runs_unchanged_with_create_transport(host_in_a_bot_project):
    async with TestPeer(host_in_a_bot_project.base_url, use_start=True) as peer:
        await peer.connect(request_data=BODY)
        hello = await hello_and_echoes(peer)
    # As Pipecat's runner would set them, but for cli_args: no runner command line here.
    runner_defaults = SmallWebRTCRunnerArguments(webrtc_connection=None)
    assert hello == {
        "transport": "transport.bot_transport",
        "connection": "transport.connection",
        "runner_args": {
            "handle_sigint": False,
            "handle_sigterm": False,
            "pipeline_idle_timeout_secs": runner_defaults.pipeline_idle_timeout_secs,
            "body": BODY,
            "session_id": peer.session_id,
            "has_cli_args": False,
            "file_storage": "LocalFileStorage",
        },
    }
    # The engine hands its workers the file's absolute path.
    assert f"with bot {host_in_a_bot_project.cwd / 'bot.py'}:bot" in host_in_a_bot_project.log()


async def test_a_bot_file_that_builds_pipecats_own_transport_gets_the_hosts(host_of_a_bot_file):
    async with TestPeer(host_of_a_bot_file.base_url) as peer:
        await peer.connect(request_data={"direct": True})
        hello = await hello_and_echoes(peer)
    assert (hello["transport"], hello["connection"]) == ("transport.bot_transport", "transport.connection")
    assert f"with bot {ECHO_BOT}:bot" in host_of_a_bot_file.log()


@pytest.fixture
def pipecats_runner(tmp_path):
    """``tests/support/runner_bot.py -t webrtc`` run by Pipecat's development runner on 127.0.0.1; its base URL."""
    port = free_port()
    log_path = tmp_path / "runner.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.pipecat_runner", "tests/support/runner_bot.py",
                "-t", "webrtc", "--host", "127.0.0.1", "--port", str(port),
            ],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + RUNNER_START_TIMEOUT_S
        while not answers(base_url + "/status"):
            assert process.poll() is None, f"Pipecat's runner exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"Pipecat's runner not answering:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield base_url
    finally:
        terminate(process)
        print(log_path.read_text()[-6000:])


def answers(url: str) -> bool:
    """Whether a GET of ``url`` succeeds."""
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except OSError:
        return False


async def test_a_bot_importing_the_hosts_transport_runs_under_pipecats_runner(pipecats_runner):
    async with TestPeer(pipecats_runner, use_start=True) as peer:
        await peer.connect(request_data=BODY)
        hello = await peer.wait_for_message(lambda m: "transport" in m)
        assert hello == {
            "body": BODY,
            "session_id": peer.session_id,
            "transport": "pipecat.transports.smallwebrtc.transport",
        }
        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, 48000) - 440) < 5
        frames = await peer.wait_for_video_frames(5)
        assert bars_match(frames[-1][1])
