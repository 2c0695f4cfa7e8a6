"""One actor per WebRTC peer: it owns the aiortc peer connection and nothing else touches it.

Everything that concerns the peer arrives in its mailbox: HTTP signaling
(offers, candidates), aiortc's events (data channel messages, state changes),
and the worker's messages for the session (bot audio and video, app messages,
connect/close). The actor turns them into aiortc calls and into messages for
the worker that runs the session's bot.

``actor`` is the mailbox loop with signaling and the session's life;
``data_channel`` the peer's "chat" channel; ``media`` the peer's media to the
bot and the bot's to the peer; ``mdns`` the peer's mDNS candidates, whose
names it resolves in tasks of their own, their answers posted to the mailbox.
The parts are plain objects the actor calls from its one task, and
``session`` holds what they all read.
"""

from engine.peer.actor import PeerActor, SignalingError

__all__ = ["PeerActor", "SignalingError"]
