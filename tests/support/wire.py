"""A lossy, slow Ethernet wire between two interfaces, for tests: ``python -m tests.support.wire A B --loss 0.05 --delay-ms 100``.

It does what ``tc qdisc add ... netem loss 5% delay 100ms`` does on a link,
for kernels built without netem: every frame that arrives on one interface
is dropped with probability ``loss`` or sent out of the other ``delay-ms``
later, in order, both ways. It reads and writes whole frames with packet
sockets, with a virtio-net header so that the kernel finishes the checksums
and segments of the frames its peers left to offloading. It prints ``ready`` once
it forwards; on SIGTERM it prints what it counted as one JSON line and exits.
"""

import argparse
import asyncio
import json
import random
import signal
import socket

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_VNET_HDR = 15
# Frames and GSO super-frames up to 64 KiB, with the virtio-net header before them.
MAX_FRAME = 65536 + 64


def packet_socket(interface: str) -> socket.socket:
    """A raw packet socket on ``interface``, frames prefixed with a virtio-net header."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((interface, 0))
    sock.setblocking(False)
    return sock


async def run(a: str, b: str, loss: float, delay_s: float, seed: int) -> dict:
    """Forward frames both ways until SIGTERM; what was forwarded and dropped each way."""
    loop = asyncio.get_running_loop()
    chance = random.Random(seed)
    sockets = {a: packet_socket(a), b: packet_socket(b)}
    counts = {f"{a}->{b}": {"forwarded": 0, "dropped": 0}, f"{b}->{a}": {"forwarded": 0, "dropped": 0}}

    def send(out: socket.socket, data: bytes) -> None:
        try:
            out.send(data)
        except OSError:
            pass  # a full queue or a link going down: lost, as on a real wire

    def receive(source: str, target: str) -> None:
        count = counts[f"{source}->{target}"]
        while True:
            try:
                data, address = sockets[source].recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue  # what this wire itself sent out of this end
            if chance.random() < loss:
                count["dropped"] += 1
                continue
            count["forwarded"] += 1
            # Same delay for every frame: the timers fire in arrival order.
            loop.call_later(delay_s, send, sockets[target], data)

    loop.add_reader(sockets[a].fileno(), receive, a, b)
    loop.add_reader(sockets[b].fileno(), receive, b, a)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for sock in sockets.values():
        loop.remove_reader(sock.fileno())
        sock.close()
    return counts


def main() -> None:
    """Parse the command line, run the wire, print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--loss", type=float, default=0.0, help="probability that a frame is dropped (0-1)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="how long each frame takes to cross")
    parser.add_argument("--seed", type=int, default=1, help="of the random drops, so a run can be repeated")
    args = parser.parse_args()
    counts = asyncio.run(run(args.a, args.b, args.loss, args.delay_ms / 1000, args.seed))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
