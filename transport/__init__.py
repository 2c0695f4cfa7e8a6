"""What a bot imports: Pipecat's SmallWebRTC transport API, served by this host.

A bot gets these classes from ``from transport import SmallWebRTCTransport``, or
unchanged from Pipecat (``create_transport()``, or
``from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport``):
in a worker, Pipecat's names are these (``pipecat_modules``).

Where each part lives: ``bot_transport`` (``SmallWebRTCTransport``, what a bot
builds), ``processors`` (its input and output processors), ``client``
(``SmallWebRTCClient``, reading and writing the bot's media), ``connection``
(``SmallWebRTCConnection``, the bot's handle on its peer, control only),
``peer_input`` and ``bot_output`` (the media decoded and encoded in the
worker), ``media`` (codecs, colour conversion, audio framing) and ``tracks``
(the seed's raw output tracks).
"""

from transport.bot_transport import SmallWebRTCTransport
from transport.client import SmallWebRTCCallbacks, SmallWebRTCClient
from transport.connection import SmallWebRTCConnection
from transport.processors import SmallWebRTCInputTransport, SmallWebRTCOutputTransport
from transport.tracks import RawAudioTrack, RawVideoTrack

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
