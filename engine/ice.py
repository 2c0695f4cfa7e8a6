"""ICE settings applied to aiortc in this process.

aiortc falls back to a public STUN server when it is given no ICE server list,
and aioice never gathers 127.0.0.1 as a host candidate. A host behind NAT, a
container, or a test confined to loopback needs control over both.
"""

import ipaddress
from collections.abc import Sequence

import aioice.ice
import ifaddr
from aiortc import RTCIceServer
from pydantic import BaseModel


class IceServer(BaseModel):
    """A STUN or TURN server, as configured and as handed to clients by ``/start``.

    Parameters:
        urls: One URL or several (``stun:host:port``, ``turn:host:port?transport=udp``).
        username: TURN username.
        credential: TURN password.
    """

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None

    def to_rtc(self) -> RTCIceServer:
        """The aiortc form of this server."""
        return RTCIceServer(urls=self.urls, username=self.username, credential=self.credential)

    def to_client(self) -> dict:
        """The form a browser's ``RTCPeerConnection`` takes, without unset fields."""
        return self.model_dump(exclude_none=True)


def local_addresses() -> set[str]:
    """Every IPv4 and IPv6 address of this machine's interfaces, loopback included."""
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


def restrict_host_addresses(allowed: Sequence[str]) -> None:
    """Gather host candidates only on these local addresses.

    aioice has no option for this, so its address lookup is replaced for the
    whole process; every peer connection made afterwards uses it. Loopback
    addresses are allowed here even though aioice leaves them out.

    Args:
        allowed: IP addresses of this machine. An empty list restores aioice's own choice.

    Raises:
        ValueError: If an address is malformed or not an address of this machine.
    """
    if not allowed:
        aioice.ice.get_host_addresses = _aioice_get_host_addresses
        return
    addresses = []
    present = local_addresses()
    for address in allowed:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError as e:
            raise ValueError(f"ice_host_addresses: {address!r} is not an IP address") from e
        if str(parsed) not in present:
            raise ValueError(
                f"ice_host_addresses: {address} is not an address of this machine "
                f"(it has {', '.join(sorted(present))})"
            )
        addresses.append(parsed)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a)
            for a in addresses
            if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses


_aioice_get_host_addresses = aioice.ice.get_host_addresses
