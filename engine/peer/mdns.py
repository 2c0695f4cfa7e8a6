"""The peer's mDNS candidates, resolved off its actor, a bounded number at a time.

A browser hides its local addresses behind ``<uuid>.local`` names. aioice
resolves such a candidate while it is being added, and aiortc waits for it (up
to a second each, in ``addIceCandidate`` and in ``setRemoteDescription``): a peer
that sent fifty unresolvable names would stall its actor for fifty seconds. So
the actor hands them to an ``MdnsResolver`` and goes on; each name is resolved
in a task of its own, and its answer comes back through the mailbox as a
``MdnsNameResolved`` about the peer connection it was asked for, where the
actor adds the candidates that wait for it (aioice then takes the address from
the resolver's table, see ``engine.aiortc_seam.mdns_answered_from``).

Bounds, per peer: ``MDNS_RESOLUTIONS_AT_ONCE`` names resolved at once (the
others wait their turn), ``MDNS_NAMES_PER_PC`` names for one peer connection
(the candidates of any more are dropped, with one log line), each waited for
at most the ``mdns_resolve_timeout_s`` setting. The candidates waiting for a
name are bounded by the actor's ``max_candidates_per_peer``. A replaced or
closed connection's resolutions are cancelled.
"""

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable

from aioice.mdns import is_mdns_hostname
from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import MediaDescription, candidate_to_sdp

from engine.peer.events import MdnsNameResolved
from engine.peer.session import PeerSession

# A browser names one host per local address it gathers on: a handful.
MDNS_NAMES_PER_PC = 8
# Each name resolved is a multicast query on the engine's network.
MDNS_RESOLUTIONS_AT_ONCE = 4

MdnsLookup = Callable[[str], Awaitable[str | None]]
"""Resolves an mDNS name to an address (None: no answer)."""

# aiortc splits a candidate's fields on whitespace; the fifth is its host.
_CANDIDATE_LINE = re.compile(r"^a=candidate:(?:\S+[ \t]+){4}(\S+).*(?:\r?\n|\Z)", re.MULTILINE)
_END_OF_CANDIDATES_LINE = re.compile(r"^a=end-of-candidates(?:\r?\n|\Z)", re.MULTILINE)


def is_mdns_candidate(candidate: RTCIceCandidate) -> bool:
    """Whether ``candidate`` names its host by an mDNS name (aioice's own test)."""
    return is_mdns_hostname(candidate.ip)


class MdnsResolver:
    """Resolves the mDNS names of one peer's candidates, for its current peer connection.

    Owned by the peer's actor and called from its task only: its tasks just
    wait for a lookup and post the answer to the actor's mailbox.

    Attributes:
        answers: The names resolved for the current peer connection, and their addresses.
    """

    def __init__(
        self,
        session: PeerSession,
        post: Callable[[MdnsNameResolved], None],
        lookup: MdnsLookup,
        timeout_s: float,
        *,
        at_once: int = MDNS_RESOLUTIONS_AT_ONCE,
        names_per_pc: int = MDNS_NAMES_PER_PC,
    ):
        """Initialize the resolver.

        Args:
            session: The session whose current peer connection the names are for.
            post: Posts an answer to the actor's mailbox (at most ``names_per_pc``
                a peer connection, so the mailbox's control bound holds).
            lookup: Resolves one name.
            timeout_s: How long one name is waited for.
            at_once: Names resolved at the same time.
            names_per_pc: Names resolved for one peer connection.
        """
        self._session = session
        self._post = post
        self._lookup = lookup
        self._at_once = at_once
        self._names_per_pc = names_per_pc
        self._timeout_s = timeout_s
        self.answers: dict[str, str] = {}
        self._unanswered: set[str] = set()
        self._waiting: dict[str, list[RTCIceCandidate]] = {}
        self._queued: deque[str] = deque()
        self._running: dict[str, asyncio.Task] = {}
        self._ended = False
        self._end_held = False
        self._over_bound_logged = False

    def take(self, candidate: RTCIceCandidate | None) -> bool:
        """Whether the actor adds ``candidate`` (None: end of candidates) now; if not, the resolver has it.

        An mDNS candidate is added once its name is answered; one whose name
        had no answer, or past the names taken for the connection, or after
        the end of candidates (aiortc would ignore it), is dropped. The end of
        candidates waits for the names being resolved: aioice would take it as
        "every pair there will be has failed".
        """
        if candidate is None:
            self._ended = True
            self._end_held = bool(self._waiting)
            return not self._end_held
        if not is_mdns_candidate(candidate) or candidate.ip in self.answers:
            return True
        name = candidate.ip
        if self._ended or name in self._unanswered:
            pass
        elif name in self._waiting:
            self._waiting[name].append(candidate)
        elif len(self.answers) + len(self._unanswered) + len(self._waiting) >= self._names_per_pc:
            if not self._over_bound_logged:
                self._over_bound_logged = True
                self._session.log.warning(
                    f"peer {self._session.pc_id}: more than {self._names_per_pc} mDNS names for one peer connection;"
                    " its further mDNS candidates are dropped"
                )
        else:
            self._waiting[name] = [candidate]
            self._queued.append(name)
            self._start_queued()
        return False

    def resolved(self, answer: MdnsNameResolved) -> list[RTCIceCandidate | None]:
        """Take a name's answer; return what the actor now adds: the candidates that waited for it, then the end of candidates if it was held for the last name."""
        name = answer.name
        self._running.pop(name, None)
        ready = self._waiting.pop(name, [])
        if answer.address is None:
            self._unanswered.add(name)
            self._session.log.debug(f"peer {self._session.pc_id}: mDNS name {name} not resolved; its candidates are dropped")
            ready = []
        else:
            self.answers[name] = answer.address
        self._start_queued()
        if self._end_held and not self._waiting:
            self._end_held = False
            ready.append(None)
        return ready

    def forget(self) -> None:
        """Cancel the resolutions for the current peer connection and forget its names (it is closed or replaced)."""
        for task in self._running.values():
            task.cancel()
        self._running.clear()
        self._queued.clear()
        self._waiting.clear()
        self._unanswered.clear()
        self.answers.clear()
        self._ended = self._end_held = self._over_bound_logged = False

    def _start_queued(self) -> None:
        while self._queued and len(self._running) < self._at_once:
            name = self._queued.popleft()
            self._running[name] = asyncio.create_task(self._resolve(self._session.pc, name))

    async def _resolve(self, pc: RTCPeerConnection, name: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                address = await self._lookup(name)
        except TimeoutError:
            address = None
        except Exception as e:
            # Whatever went wrong, the name has no answer; its candidates are dropped.
            self._session.log.warning(f"peer {self._session.pc_id}: resolving mDNS name {name} failed: {e!r}")
            address = None
        self._post(MdnsNameResolved(pc, name, address))


def take_mdns_out_of_offer(sdp: str, media: list[MediaDescription]) -> tuple[str, list[RTCIceCandidate | None]]:
    """An offer without its mDNS candidates and its end of candidates, and those, to be added after it as trickled ones.

    Their names are resolved off the actor, and the end of candidates (last,
    as None) must wait for them. The candidates get the first media section's
    mid: under max-bundle its transport carries every section's candidates.

    Args:
        sdp: The offer.
        media: Its media sections, parsed.
    """
    # Under max-bundle every section usually repeats the same candidates.
    distinct = {candidate_to_sdp(c): c for section in media for c in section.ice_candidates if is_mdns_candidate(c)}
    later: list[RTCIceCandidate | None] = list(distinct.values())
    for candidate in later:
        candidate.sdpMid, candidate.sdpMLineIndex = media[0].rtp.muxId, 0
    if later:
        sdp = _CANDIDATE_LINE.sub(lambda line: "" if is_mdns_hostname(line[1]) else line[0], sdp)
    if any(section.ice_candidates_complete for section in media):
        sdp = _END_OF_CANDIDATES_LINE.sub("", sdp)
        later.append(None)
    return sdp, later
