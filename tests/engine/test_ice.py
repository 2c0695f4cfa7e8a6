"""Host candidates only on the allowed addresses, loopback included; no public STUN fallback; which end of candidates counts;
time-limited TURN credentials."""


import base64
import hashlib
import hmac
import time

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from engine.common.settings import load_settings
from engine.ice import (
    EndOfCandidates,
    announce_address,
    ends_candidates_in_use,
    ice_servers_now,
    restrict_host_addresses,
    turn_credentials,
)


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


# An answer that bundles the audio (mid 0), video (1) and data (3) m-lines onto mid 0's transport.
BUNDLED_ANSWER = """v=0
o=- 0 0 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1 3
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=mid:0
m=video 9 UDP/TLS/RTP/SAVPF 96
a=mid:1
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
a=mid:3
"""


@pytest.mark.parametrize(
    ("marker", "ends"),
    [
        (EndOfCandidates("0", 0), True),
        (EndOfCandidates(None, 0), True),
        (EndOfCandidates("1", 1), False),
        (EndOfCandidates("3", None), False),
        (EndOfCandidates(None, 2), False),
        (EndOfCandidates(None, None), True),
        (EndOfCandidates("7", 7), True),
    ],
)
def test_only_the_bundle_transports_end_of_candidates_ends_them(marker, ends):
    assert ends_candidates_in_use(marker, BUNDLED_ANSWER) is ends


def test_without_a_bundle_every_end_of_candidates_counts():
    unbundled = BUNDLED_ANSWER.replace("a=group:BUNDLE 0 1 3\n", "")
    assert ends_candidates_in_use(EndOfCandidates("1", 1), unbundled)


def test_turn_credentials_are_the_turn_rest_apis():
    # The credential computed by `openssl dgst -sha1 -hmac s3cret -binary | base64` of the username.
    assert turn_credentials("s3cret", 86400, "alice", now=1700000000) == (
        "1700086400:alice",
        "HJX0XIkrCiQCuU88Z0oeXj+QW60=",
    )


def test_each_call_mints_credentials_for_the_turn_servers_only():
    settings = load_settings(
        turn_shared_secret="s3cret", turn_credential_ttl_s=600,
        ice_servers=["stun:s:3478", "turn:t:3478?transport=tcp", "turns:t:5349"],
    )  # fmt: skip
    before = time.time()
    first, second = ice_servers_now(settings), ice_servers_now(settings)
    after = time.time()
    assert first[0] == settings.ice_servers[0]
    assert first[1].username == first[2].username and first[1].username != second[1].username
    for server in (first[1], first[2], second[1]):
        expiry, _, user = server.username.partition(":")
        assert before + 600 - 1 <= int(expiry) <= after + 600 and user
        expected = hmac.new(b"s3cret", server.username.encode(), hashlib.sha1).digest()
        assert base64.b64decode(server.credential) == expected
    assert [s.urls for s in first] == [s.urls for s in settings.ice_servers]


def test_without_a_secret_the_servers_are_as_configured():
    turn = '{"urls": "turn:t:3478", "username": "u", "credential": "p"}'
    settings = load_settings(ice_servers=[turn])
    assert ice_servers_now(settings) == settings.ice_servers
