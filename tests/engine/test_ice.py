"""Host candidates only on the allowed addresses, loopback included; no public STUN fallback."""


import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from engine.ice import announce_address, restrict_host_addresses


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


def test_announced_address_replaces_host_candidates_only():
    sdp = (
        "a=candidate:a 1 udp 2130706431 10.0.0.5 41000 typ host\r\n"
        "a=candidate:b 1 udp 1694498815 198.51.100.1 5000 typ srflx raddr 10.0.0.5 rport 41000\r\n"
    )
    assert announce_address(sdp, "203.0.113.5") == (
        "a=candidate:a 1 udp 2130706431 203.0.113.5 41000 typ host\r\n"
        "a=candidate:b 1 udp 1694498815 198.51.100.1 5000 typ srflx raddr 10.0.0.5 rport 41000\r\n"
    )
