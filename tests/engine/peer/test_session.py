"""What the parts of a peer's actor share about its session: the worker it runs on, and whether its bot is ready."""

from engine.common.protocol import AppMessageIn, PeerStateChange
from engine.peer.session import PeerSession
from tests.support.peers import TestWorker


async def test_messages_go_to_the_sessions_worker_and_a_new_worker_starts_unready():
    async with TestWorker("worker-1") as first, TestWorker("worker-2") as second:
        session = PeerSession("pc-1", first.handle)
        assert (session.pc_id, session.pc, session.bot_ready) == ("pc-1", None, False)
        session.bot_ready = True
        session.to_worker(PeerStateChange("pc-1", "connected"))
        await first.wait_for(PeerStateChange)

        session.hand_to(second.handle)
        assert session.worker is second.handle and not session.bot_ready
        session.to_worker(AppMessageIn("pc-1", "{}"))
        await second.wait_for(AppMessageIn)
        assert first.messages(AppMessageIn) == []
