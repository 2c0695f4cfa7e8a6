"""A peer's mDNS names, resolved off its actor: a few at a time, a bounded number per connection, each for a bounded time; and an offer's mDNS candidates taken out of it."""

import asyncio
from typing import Self

from aiortc.sdp import SessionDescription

from engine.common.mailbox import Mailbox
from engine.peer.mdns import MdnsResolver, take_mdns_out_of_offer
from engine.peer.session import PeerSession
from tests.support.link import until
from tests.support.logs import warnings_logged
from tests.support.peers import (
    PC_ID,
    WAIT_S,
    MdnsResponders,
    TestWorker,
    client_pc,
    loopback_only,
    mdns_candidate,
    mdns_name,
    trickled,
)

LOOPBACK = "1 1 udp 2130706431 127.0.0.1 9 typ host"


class ResolverRig:
    """An ``MdnsResolver`` for a session with a real peer connection, its answers read from a real mailbox as the actor reads them."""

    def __init__(self, timeout_s: float = 60.0, **bounds):
        self.responders = MdnsResponders()
        self.mailbox = Mailbox("peer test")
        self.session = PeerSession(PC_ID, TestWorker("worker-1").handle)
        self.resolver = MdnsResolver(self.session, self.mailbox.put, self.responders.lookup, timeout_s, **bounds)

    async def __aenter__(self) -> Self:
        self.session.pc = client_pc()
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.resolver.forget()
        await self.session.pc.close()

    async def next_answer(self) -> list:
        """Take the next answer posted, as the actor does; return what the actor would then add."""
        async with asyncio.timeout(WAIT_S):
            answer = await self.mailbox.get()
        assert answer.pc is self.session.pc
        return self.resolver.resolved(answer)


async def test_names_are_looked_up_a_few_at_a_time_and_their_candidates_wait_for_them():
    async with ResolverRig(at_once=2) as rig:
        first, second, third, first_again = mdns_candidate(0), mdns_candidate(1), mdns_candidate(2), mdns_candidate(0, port=10)
        assert [rig.resolver.take(c) for c in (first, second, third, first_again)] == [False] * 4
        await until(lambda: rig.responders.pending == {mdns_name(0), mdns_name(1)})

        rig.responders.publish(mdns_name(0), "127.0.0.1")
        assert await rig.next_answer() == [first, first_again]
        assert rig.resolver.answers == {mdns_name(0): "127.0.0.1"}
        await until(lambda: rig.responders.pending == {mdns_name(1), mdns_name(2)})
        assert rig.responders.asked == [mdns_name(0), mdns_name(1), mdns_name(2)]
        # A candidate of a name answered, or with an address, is the actor's to add at once.
        assert rig.resolver.take(mdns_candidate(0, port=11))
        assert rig.resolver.take(trickled(LOOPBACK))


async def test_a_name_no_one_answers_is_given_up_and_its_candidates_dropped():
    async with ResolverRig(timeout_s=0.05, at_once=1) as rig:
        rig.resolver.take(mdns_candidate(0))
        rig.resolver.take(mdns_candidate(1))
        assert await rig.next_answer() == []
        assert rig.responders.cancelled == [mdns_name(0)]
        # Its turn went to the next name, and it is not asked for again.
        await until(lambda: rig.responders.pending == {mdns_name(1)})
        assert not rig.resolver.take(mdns_candidate(0, port=10))
        assert rig.responders.asked == [mdns_name(0), mdns_name(1)]


async def test_the_end_of_candidates_waits_for_the_names_being_resolved():
    async with ResolverRig() as rig:
        named = mdns_candidate(0)
        assert not rig.resolver.take(named)
        assert not rig.resolver.take(None)
        assert rig.resolver.take(trickled(LOOPBACK))
        rig.responders.publish(mdns_name(0), "127.0.0.1")
        assert await rig.next_answer() == [named, None]
        assert rig.resolver.take(None)
        # After the end a new name is for nothing (aiortc would ignore its candidate): not asked for.
        assert not rig.resolver.take(mdns_candidate(1))
        await asyncio.sleep(0)  # a lookup started would have run its first step
        assert rig.responders.asked == [mdns_name(0)]


async def test_the_end_of_candidates_with_no_name_pending_is_added_at_once():
    async with ResolverRig() as rig:
        assert rig.resolver.take(None)


async def test_past_the_names_of_one_connection_candidates_are_dropped_with_one_line():
    with warnings_logged() as records:
        async with ResolverRig(names_per_pc=2) as rig:
            assert not any(rig.resolver.take(mdns_candidate(n)) for n in range(5))
            await until(lambda: len(rig.responders.pending) == 2)
            assert rig.responders.asked == [mdns_name(0), mdns_name(1)]
    [record] = records
    assert "more than 2 mDNS names for one peer connection" in record["message"]


async def test_forget_cancels_the_lookups_and_the_names_are_asked_again_for_the_next_connection():
    async with ResolverRig() as rig:
        rig.resolver.take(mdns_candidate(0))
        rig.resolver.take(mdns_candidate(1))
        await until(lambda: len(rig.responders.pending) == 2)
        rig.resolver.forget()
        await until(lambda: sorted(rig.responders.cancelled) == [mdns_name(0), mdns_name(1)])
        assert rig.responders.pending == set()
        rig.resolver.take(mdns_candidate(0))
        await until(lambda: rig.responders.pending == {mdns_name(0)})


async def test_an_offer_loses_its_mdns_candidates_and_its_end_of_candidates_to_be_added_after_it():
    with loopback_only():
        pc = client_pc()
        pc.addTransceiver("audio")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
    gathered = pc.localDescription.sdp
    named = "".join(f"a=candidate:{n} 1 udp 2122260223 {mdns_name(n)} 9 typ host\r\n" for n in (0, 1))
    # Each section names the same two hosts, as a browser's bundled offer does.
    offer = gathered.replace("a=mid:0\r\n", "a=mid:0\r\n" + named).replace("a=mid:1\r\n", "a=mid:1\r\n" + named)
    media = SessionDescription.parse(offer).media

    sdp, later = take_mdns_out_of_offer(offer, media)

    assert sdp == gathered.replace("a=end-of-candidates\r\n", "")
    assert [c.ip if c else c for c in later] == [mdns_name(0), mdns_name(1), None]
    assert {(c.sdpMid, c.sdpMLineIndex) for c in later[:-1]} == {("0", 0)}
    # Without mDNS names only the end of candidates waits.
    assert take_mdns_out_of_offer(gathered, SessionDescription.parse(gathered).media) == (sdp, [None])
