"""Host candidates only on the allowed addresses, loopback included; no public STUN fallback."""

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from engine.ice import restrict_host_addresses


@pytest.fixture(autouse=True)
def restore():
    yield
    restrict_host_addresses([])


async def test_loopback_only_candidates():
    restrict_host_addresses(["127.0.0.1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    candidates = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")]
    await pc.close()
    assert candidates and all(" 127.0.0.1 " in c and "typ host" in c for c in candidates)


def test_addresses_not_on_this_machine_are_refused():
    with pytest.raises(ValueError, match="ice_host_addresses: 203.0.113.7 is not an address of this machine"):
        restrict_host_addresses(["203.0.113.7"])
    with pytest.raises(ValueError, match="not an IP address"):
        restrict_host_addresses(["localhost"])
