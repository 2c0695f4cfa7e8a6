"""What a bot imports: Pipecat's SmallWebRTC transport API, served by this host.

Change ``from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport``
to ``from transport import SmallWebRTCTransport`` and the bot runs on a worker.
"""

from transport.connection import SmallWebRTCConnection
from transport.tracks import RawAudioTrack, RawVideoTrack
from transport.transport import (
    SmallWebRTCCallbacks,
    SmallWebRTCClient,
    SmallWebRTCInputTransport,
    SmallWebRTCOutputTransport,
    SmallWebRTCTransport,
)

__all__ = [
    "RawAudioTrack",
    "RawVideoTrack",
    "SmallWebRTCCallbacks",
    "SmallWebRTCClient",
    "SmallWebRTCConnection",
    "SmallWebRTCInputTransport",
    "SmallWebRTCOutputTransport",
    "SmallWebRTCTransport",
]
