"""ICE settings applied to aiortc in this process, and the trickled end of candidates.

aiortc falls back to a public STUN server when it is given no ICE server list,
and aioice never gathers 127.0.0.1 as a host candidate. A host behind NAT, a
container, or a test confined to loopback needs control over both.
"""

import base64
import errno
import hashlib
import hmac
import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Sequence
from typing import NamedTuple

import aioice.ice
import ifaddr
import uvloop
from aiortc.sdp import SessionDescription

from engine.common.settings import HostSettings, IceServer


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


class PortRangeLoop(uvloop.Loop):
    """An event loop whose UDP sockets that ask for any port take one from a fixed range.

    aioice binds its ICE sockets to port 0 and has no option for a range, so
    the engine runs on this loop when ``ice_udp_port_range`` is set: a
    firewall or container then needs only that range open.
    """

    port_range: tuple[int, int] | None = None
    _next_port = None

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, **kwargs):
        """Bind as asked, but within the range when the asked-for port is 0.

        Raises:
            OSError: EADDRINUSE when every port of the range is taken.
        """
        if self.port_range is None or local_addr is None or local_addr[1] != 0:
            return await super().create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
        first, last = self.port_range
        if self._next_port is None:
            self._next_port = itertools.cycle(range(first, last + 1))
        # Start after the last port handed out, so a freed port is not reused at once.
        for _ in range(last - first + 1):
            port = next(self._next_port)
            try:
                return await super().create_datagram_endpoint(
                    protocol_factory, local_addr=(local_addr[0], port), remote_addr=remote_addr, **kwargs
                )
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"every UDP port of ice_udp_port_range {first}-{last} is in use")


def announce_address(sdp: str, address: str) -> str:
    """The SDP with its host candidates announcing ``address`` (a NAT's 1:1 public address)."""
    return re.sub(
        r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host)",
        lambda m: f"{m[1]}{address}{m[3]}",
        sdp,
        flags=re.MULTILINE,
    )


def turn_credentials(secret: str, ttl_s: float, user: str, now: float | None = None) -> tuple[str, str]:
    """A TURN username and password valid for ``ttl_s`` seconds, from the secret the TURN server shares.

    The TURN REST API's scheme, coturn's ``use-auth-secret``: the username is
    ``<expiry unix time>:<user>``, the password base64(HMAC-SHA1(secret,
    username)). The TURN server checks both without storing either.
    """
    username = f"{int((time.time() if now is None else now) + ttl_s)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers_now(settings: HostSettings) -> list[IceServer]:
    """The configured ICE servers, each TURN server with fresh credentials when ``turn_shared_secret`` is set.

    Each call mints a username of its own (a random user part), for one
    ``/start`` or one peer connection of the engine.
    """
    if not settings.turn_shared_secret:
        return settings.ice_servers
    username, credential = turn_credentials(
        settings.turn_shared_secret, settings.turn_credential_ttl_s, secrets.token_urlsafe(9)
    )
    return [
        server.model_copy(update={"username": username, "credential": credential}) if server.is_turn else server
        for server in settings.ice_servers
    ]


class EndOfCandidates(NamedTuple):
    """A trickled end-of-candidates marker (an empty ``candidate``, RFC 8840), for the m-line it names."""

    sdp_mid: str | None
    sdp_mline_index: int | None


def ends_candidates_in_use(marker: EndOfCandidates, answer_sdp: str) -> bool:
    """Whether the marker ends the candidates of a transport the answer uses.

    An m-line the answer bundles onto another's transport has none in use.
    Firefox gathers for each m-line until the answer bundles them and ends
    each m-line's candidates when its gathering is done, maybe before the
    bundle transport's own are all sent; aiortc ends every transport's remote
    candidates at once, so taking such a marker would cut the bundle
    transport's short (and fail ICE outright if no check had come in yet). A
    marker that names no m-line of the answer ends them all, as aiortc does.
    """
    answer = SessionDescription.parse(answer_sdp)
    mids = [media.rtp.muxId for media in answer.media]
    mid = marker.sdp_mid
    if mid is None and marker.sdp_mline_index is not None and 0 <= marker.sdp_mline_index < len(mids):
        mid = mids[marker.sdp_mline_index]
    bundle = next((group.items for group in answer.group if group.semantic == "BUNDLE"), [])
    # The first mid of the group owns the transport the others share.
    return mid not in bundle[1:]
