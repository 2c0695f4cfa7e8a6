"""The tests' end of the engine-worker link: private endpoints, waiting for a condition, and reading an outbox.

A test that plays the engine (or the worker) reads what the other side queued
in its ``Outbox`` instead of running a pump: ``sent`` takes the messages, with
their payload frames, in the order the pump would send them.
"""

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import zmq
import zmq.asyncio

from engine.common.link import FULL_PIPE_RETRY_S, Frames, Outbox
from engine.common.protocol import FromWorker, decode_from_worker

# How long a test waits for something that is due, before it fails instead of hanging.
DUE_S = 5.0


async def until(condition, timeout: float = 10.0):
    """Poll ``condition()`` until it returns something true, and return that.

    Raises:
        TimeoutError: If it has not within ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        while not (result := condition()):
            await asyncio.sleep(0.01)
        return result


def ipc_endpoint(directory: Path, name: str = "engine") -> str:
    """An ``ipc://`` endpoint in ``directory`` (a test's own)."""
    return f"ipc://{directory / name}.sock"


@contextlib.contextmanager
def private_endpoint() -> Iterator[str]:
    """An ``ipc://`` endpoint in a fresh directory, removed afterwards (short, as ipc paths must be)."""
    with tempfile.TemporaryDirectory(prefix="engine-test-") as directory:
        yield ipc_endpoint(Path(directory))


def queued_frames(outbox: Outbox) -> list[Frames]:
    """Take the multipart messages queued in ``outbox`` (header first), in the order its pump would send them."""
    items = []
    while (item := outbox.mailbox.get_nowait()) is not None:
        items.append(item)
    return items


def _decoded(parts: Frames) -> tuple[FromWorker, list[bytes]]:
    header, *payload = parts
    return decode_from_worker(header), [bytes(part) for part in payload]


def sent(outbox: Outbox) -> list[tuple[FromWorker, list[bytes]]]:
    """Take what a worker's ``outbox`` holds for the engine, decoded, with the payloads."""
    return [_decoded(parts) for parts in queued_frames(outbox)]


def sent_messages(outbox: Outbox) -> list[FromWorker]:
    """Take what a worker's ``outbox`` holds for the engine, the messages only."""
    return [message for message, _ in sent(outbox)]


async def next_sent(outbox: Outbox, kind: type, timeout: float = DUE_S) -> tuple[FromWorker, list[bytes]]:
    """Wait for the next message of type ``kind`` in ``outbox``, taking the ones before it."""
    while True:
        message, payload = _decoded(await asyncio.wait_for(outbox.mailbox.get(), timeout))
        if isinstance(message, kind):
            return message, payload


async def send_to_worker(router: zmq.asyncio.Socket, identity: bytes, parts: Frames) -> bool:
    """Send one message to one worker through a test's ``zmq.asyncio`` ROUTER, waiting while its pipe is full.

    Returns:
        False if the worker is not connected (the message is dropped).
    """
    while True:
        try:
            await router.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            await asyncio.sleep(FULL_PIPE_RETRY_S)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise
