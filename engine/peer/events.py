"""What aiortc, the actor's timers and its mDNS resolver post to a peer's mailbox, each about one peer connection.

Each event names the peer connection it is about: a restart replaces the
connection under the same pc_id, and the actor ignores what an old one still
reports.
"""

from dataclasses import dataclass

from aiortc import RTCDataChannel, RTCPeerConnection


@dataclass(frozen=True)
class PcEvent:
    """Something about one peer connection (None: while the session has none)."""

    pc: RTCPeerConnection | None


@dataclass(frozen=True)
class ConnectionStateChanged(PcEvent):
    """aiortc: the connection's state changed."""

    state: str


@dataclass(frozen=True)
class LivenessTick(PcEvent):
    """The actor's ticker: time to re-evaluate liveness (ping window, lost peers, restart grace)."""


@dataclass(frozen=True)
class DataChannelArrived(PcEvent):
    """aiortc: the peer created its data channel (it may be open already)."""

    channel: RTCDataChannel


@dataclass(frozen=True)
class DataChannelOpened(PcEvent):
    """aiortc: the peer's data channel opened."""


@dataclass(frozen=True)
class DataChannelMessage(PcEvent):
    """aiortc: a message arrived on the peer's data channel."""

    message: str | bytes


@dataclass(frozen=True)
class DataChannelDeadline(PcEvent):
    """The data channel's timer: the connection has been up for the data channel timeout."""


@dataclass(frozen=True)
class MdnsNameResolved(PcEvent):
    """The mDNS resolver: a name of the connection's candidates resolved (None: no answer)."""

    name: str
    address: str | None
