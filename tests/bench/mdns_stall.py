"""Benchmark of issue 10: how long mDNS candidates no one answers hold a peer's actor.

One command (about a minute against a tree that resolves on the actor, seconds after):

    python -m tests.bench.mdns_stall --names 50

One real ``PeerActor``, made as the engine makes it (its mDNS names are asked
of this machine's network), answers a real aiortc peer on 127.0.0.1 whose
offer leaves its candidates to be trickled, as a browser's does. The peer
restarts its connection with an offer whose every section also names
``--names`` hosts ``<uuid>.local`` that no one on the network answers (timed
against the same restart without them); then it PATCHes ``--names`` such
candidates, and right behind them sends a data-channel message (a
``trackStatus``, which the actor hands to the worker) and a second PATCH with
one plain candidate. It prints how long each took to be handled, against the
same data-channel message with nothing pending. Nothing is asserted.

To measure another tree's engine (say, before a change), copy its ``engine/``
next to this ``tests/`` in a directory of its own and run this file from there
with that directory on ``PYTHONPATH``: only the engine's public API is used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from types import SimpleNamespace

from engine.common.protocol import SessionOpen, TrackStatusChange
from engine.common.settings import HostSettings
from engine.metrics import HostMetrics, SessionOutcome
from engine.peer import PeerActor
from tests.support.peers import (
    PC_ID,
    ClientPeer,
    TestWorker,
    loopback_only,
    trickled,
    without_end_of_candidates,
)

TRACK_STATUS = {"type": "trackStatus", "receiver_index": 1, "enabled": True}


def unanswered_candidates(count: int) -> list[str]:
    """Host candidates (``a=candidate:`` values) named by fresh mDNS names, so no cache anywhere knows them."""
    return [f"{n} 1 udp 2122260223 {uuid.uuid4()}.local {40000 + n} typ host" for n in range(count)]


def with_unanswered_candidates(count: int):
    """An SDP rewrite: a trickling browser's offer whose every section also names ``count`` hosts no one answers."""
    lines = "".join(f"a=candidate:{candidate}\r\n" for candidate in unanswered_candidates(count))

    def rewrite(sdp: str) -> str:
        return without_end_of_candidates(sdp).replace("a=mid:", lines + "a=mid:")

    return rewrite


async def data_channel_latency(client: ClientPeer, worker: TestWorker) -> float:
    """Seconds from a ``trackStatus`` sent on the data channel to the worker having it from the actor."""
    seen = len(worker.messages(TrackStatusChange))
    start = time.monotonic()
    client.send_signalling(TRACK_STATUS)
    # Polled rather than TestWorker.wait_for, whose bound a stalled actor outlasts.
    while len(worker.messages(TrackStatusChange)) == seen:
        await asyncio.sleep(0.001)
    return time.monotonic() - start


async def timed(coro) -> float:
    """Seconds ``coro`` took."""
    start = time.monotonic()
    await coro
    return time.monotonic() - start


async def measure(names: int) -> None:
    with loopback_only():
        async with TestWorker("worker-1") as worker:
            no_engine = SimpleNamespace(live_peer_count=lambda: 1, draining=False, loop_lag_ms=0.0, registry=[])
            actor = PeerActor(
                SessionOpen(PC_ID, runner_session_id="runner-1"),
                HostSettings(ice_servers=[]),
                worker.handle,
                HostMetrics(no_engine),
                lambda _: None,
            )
            run = asyncio.create_task(actor.run())
            client = ClientPeer(send_media=False)
            try:
                await client.negotiate(actor, rewrite=without_end_of_candidates)
                await client.wait_until_open()
                idle = [await data_channel_latency(client, worker) for _ in range(5)]

                start = time.monotonic()
                patch = asyncio.create_task(timed(actor.add_candidates([trickled(c) for c in unanswered_candidates(names)])))
                await asyncio.sleep(0)  # the PATCH is in the mailbox first
                message = asyncio.create_task(data_channel_latency(client, worker))
                second_patch = asyncio.create_task(
                    timed(actor.add_candidates([trickled("1 1 udp 2130706431 127.0.0.1 9 typ host")]))
                )
                patch_s, message_s, second_s = await asyncio.gather(patch, message, second_patch)
                total_s = time.monotonic() - start

                # Each restart is a fresh connection, with its own mDNS bounds.
                plain_restart_s = await timed(client.restart(actor, rewrite=without_end_of_candidates))
                restart_s = await timed(client.restart(actor, rewrite=with_unanswered_candidates(names)))
            finally:
                actor.close("benchmark over", SessionOutcome.HOST_STOPPED)
                await run
                await client.close()
    print(f"{names} mDNS names no one answers, in one PATCH:")
    print(f"  a data-channel message, nothing pending (median of 5): {statistics.median(idle) * 1000:8.1f} ms")
    print(f"  the PATCH answered after:                              {patch_s * 1000:8.1f} ms")
    print(f"  a data-channel message sent right behind it:           {message_s * 1000:8.1f} ms")
    print(f"  a second PATCH (one plain candidate) right behind:     {second_s * 1000:8.1f} ms")
    print(f"  all three handled after:                               {total_s * 1000:8.1f} ms")
    print(f"{names} mDNS names no one answers, in every section of a restart offer:")
    print(f"  the restart (client side included), without them:      {plain_restart_s * 1000:8.1f} ms")
    print(f"  the restart with them:                                 {restart_s * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=50, help="mDNS candidates PATCHed (the engine takes 50 a PATCH)")
    asyncio.run(measure(parser.parse_args().names))


if __name__ == "__main__":
    main()
