"""For the worker's unit tests: tiny bots, a fake engine on a real ROUTER socket, and reading an outbox.

The bots are plain async functions (``--bot tests.support.workers:greeter``);
none builds a Pipecat pipeline, so a session starts in milliseconds.
"""

import asyncio
import os

import zmq
import zmq.asyncio

from engine.common.link import bind_router, frames
from engine.common.protocol import FromWorker, Message, decode_from_worker
from tests.support.link import send_to_worker


async def greeter(runner_args):
    """Says who it is and what it was given (an ``AppMessageOut``), then stays until its peer is closed.

    With ``{"leave": true}`` in the body it returns once it has said so.
    """
    connection = runner_args.webrtc_connection
    closed = asyncio.Event()

    @connection.event_handler("closed")
    async def on_closed(connection):
        closed.set()

    connection.send_app_message(
        {
            "session_id": runner_args.session_id,
            "worker_id": runner_args.worker_id,
            "body": runner_args.body,
            "pid": os.getpid(),
        }
    )
    if isinstance(runner_args.body, dict) and runner_args.body.get("leave"):
        return
    await closed.wait()


# Blocks the hoarder bots leave behind, one between every two of their buffers, as
# long-lived allocations are: the heap cannot just shrink from its top once they are freed.
HOARD_PINS: list[bytearray] = []
HOARD_BLOCKS = 2000
HOARD_BLOCK_BYTES = 40_000  # from malloc's heap: above pymalloc's 512 bytes, under its mmap threshold


async def hoarder(runner_args):
    """A ``greeter`` that holds 80 MB of heap blocks in a reference cycle, as a Pipecat pipeline holds its frames."""
    blocks = []
    for _ in range(HOARD_BLOCKS):
        blocks.append(bytearray(b"x" * HOARD_BLOCK_BYTES))  # written, so resident
        HOARD_PINS.append(bytearray(1024))
    cycle = [blocks]
    cycle.append(cycle)
    await greeter(runner_args)


class FakeEngine:
    """The engine's end of the link and nothing else: a real ROUTER (``bind_router``) the test drives.

    ``recv`` decodes what workers send; ``expect`` waits for one kind of
    message, passing over the others (heartbeats); ``send`` encodes and sends.
    """

    def __init__(self, endpoint: str):
        """Bind the ROUTER at ``endpoint``."""
        self.endpoint = endpoint
        self.context = zmq.asyncio.Context()
        self.router = bind_router(self.context, endpoint)

    async def recv(self, timeout: float = 5.0) -> tuple[bytes, FromWorker, list[bytes]]:
        """The next message from any worker: its identity, the message and its payload frames."""
        identity, header, *payload = await asyncio.wait_for(self.router.recv_multipart(), timeout)
        return identity, decode_from_worker(header), payload

    async def expect(self, kind: type, timeout: float = 5.0, **fields) -> tuple[bytes, FromWorker]:
        """The next message of type ``kind`` whose attributes equal ``fields``, passing over the others."""

        async def wait() -> tuple[bytes, FromWorker]:
            while True:
                identity, message, _ = await self.recv(timeout)
                if isinstance(message, kind) and all(getattr(message, k) == v for k, v in fields.items()):
                    return identity, message

        return await asyncio.wait_for(wait(), timeout)

    async def send(self, identity: bytes, message: Message, *payload) -> bool:
        """Send one message to one worker; False if it is not connected."""
        return await send_to_worker(self.router, identity, frames(message, *payload))

    async def send_raw(self, identity: bytes, *parts: bytes) -> bool:
        """Send frames as they are (say, one no decoder can read)."""
        return await send_to_worker(self.router, identity, list(parts))

    def close(self) -> None:
        """Close the socket and its context."""
        self.router.close(linger=0)
        self.context.term()
