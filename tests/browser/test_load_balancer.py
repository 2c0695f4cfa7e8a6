"""Pipecat's prebuilt web client in Chromium, through HAProxy (``config/haproxy.cfg``) in front of two hosts.

HAProxy runs inside the test's network namespace, started as the hosts are.
The page, its scripts, ``/start`` and every ``/sessions/{sessionId}/api/offer``
request go to the balancer; the call must land on one host and stay there.
"""

import pytest

from tests.browser.test_prebuilt_client import PLAYGROUND, prebuilt_client_call
from tests.support.balancer import SERVER_NAMES, Balancer

pytestmark = pytest.mark.browser


def test_pipecat_prebuilt_client_call_through_haproxy(haproxy, host_factory, new_page):
    hosts = [host_factory(1, "--host-id", name) for name in SERVER_NAMES]
    with Balancer(haproxy, *(f"127.0.0.1:{host.port}" for host in hosts)) as balancer:
        owner = prebuilt_client_call(
            hosts, new_page, PLAYGROUND, "pipecat-prebuilt-client-through-haproxy.png", base_url=balancer.base_url
        )
        # Its offers and candidates went to the host that answered its /start, by the session id alone.
        name = SERVER_NAMES[hosts.index(owner)]
        routed = [line for line in balancer.log().splitlines() if "/sessions/" in line]
        assert routed and all(f" hosts/{name} " in line for line in routed), routed
