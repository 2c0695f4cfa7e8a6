"""aiortc's events name the peer connection they are about: the actor ignores what a replaced one still reports."""

import asyncio
import dataclasses

from engine.common.protocol import SessionClose
from engine.peer.events import ConnectionStateChanged, PcEvent
from tests.support.peers import PeerRig


def test_every_event_is_a_frozen_record_about_one_peer_connection():
    events = PcEvent.__subclasses__()
    assert len(events) == 7
    for event in events:
        assert dataclasses.fields(event)[0].name == "pc"
        assert event.__dataclass_params__.frozen


async def test_a_replaced_connection_failing_late_does_not_touch_the_session():
    async with PeerRig(restart_grace_s=0.2) as rig:
        await rig.connect()
        await rig.client.restart(rig.actor)
        await rig.client.wait_until_open()
        (_, old), (_, new) = rig.made
        rig.actor.mailbox.put(ConnectionStateChanged(old, "failed"))
        # Past the restart grace a failure of the current connection would have ended the session.
        await asyncio.sleep(0.6)
        assert new.connectionState == "connected"
        assert not rig.actor.ended and rig.worker.messages(SessionClose) == []
