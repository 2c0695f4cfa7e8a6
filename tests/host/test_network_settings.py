"""The network settings on the real host: its ICE port range and its announced address."""

import asyncio

from tests.support.client import TestPeer
from tests.support.host import SMALL_VIDEO, HostProcess


async def test_the_engine_uses_only_its_port_range_and_announces_its_address():
    with HostProcess(1, "--ice-udp-port-range", "41000-41009", "--ice-announced-address", "127.0.0.1") as host:
        async with TestPeer(host.base_url) as first, TestPeer(host.base_url) as second:
            await asyncio.gather(first.connect(request_data=SMALL_VIDEO), second.connect(request_data=SMALL_VIDEO))
            await asyncio.gather(first.wait_for_video_frames(3), second.wait_for_video_frames(3))
            for peer in (first, second):
                ports = [
                    int(line.split()[5])
                    for line in peer.pc.remoteDescription.sdp.splitlines()
                    if line.startswith("a=candidate")
                ]
                assert ports and all(41000 <= port <= 41009 for port in ports), ports
