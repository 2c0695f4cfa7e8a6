"""Pipecat's SmallWebRTC names made this host's, in a process of its own as in a worker (they change for the whole process)."""

import json
import subprocess
import sys

from tests.support.host import REPO

# Runs in a fresh interpreter: which of Pipecat's names install() changes, and what a bot asking Pipecat gets.
SCRIPT = """
import asyncio
import json

from pipecat.runner.types import SmallWebRTCRunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc import connection as pipecat_connection
from pipecat.transports.smallwebrtc import transport as pipecat_transport

from engine.common.link import Outbox
from transport import SmallWebRTCConnection, pipecat_modules

modules = {"connection": pipecat_connection, "transport": pipecat_transport}
before = {key: dict(vars(module)) for key, module in modules.items()}
pipecat_modules.install()

from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport


async def created():
    runner_args = SmallWebRTCRunnerArguments(webrtc_connection=SmallWebRTCConnection("pc-1", Outbox("x")))
    return await create_transport(runner_args, {"webrtc": lambda: TransportParams(audio_in_enabled=True)})


print(json.dumps({
    "changed": {
        key: {name: value.__module__ for name, value in vars(module).items() if before[key][name] is not value}
        for key, module in modules.items()
    },
    "imported": SmallWebRTCTransport.__module__,
    "created": type(asyncio.run(created())).__module__,
}))
"""


def test_a_bot_asking_pipecat_for_smallwebrtc_classes_gets_the_hosts():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    # Exactly the classes the host has; the rest (IceServer, the signalling messages, ...) stay Pipecat's.
    assert found["changed"] == {
        "connection": {"SmallWebRTCConnection": "transport.connection"},
        "transport": {
            "RawAudioTrack": "transport.tracks",
            "RawVideoTrack": "transport.tracks",
            "SmallWebRTCCallbacks": "transport.client",
            "SmallWebRTCClient": "transport.client",
            "SmallWebRTCConnection": "transport.connection",
            "SmallWebRTCInputTransport": "transport.processors",
            "SmallWebRTCOutputTransport": "transport.processors",
            "SmallWebRTCTransport": "transport.bot_transport",
        },
    }
    assert found["imported"] == found["created"] == "transport.bot_transport"
