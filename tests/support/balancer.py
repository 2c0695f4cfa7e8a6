"""Runs Debian's HAProxy with the shipped ``config/haproxy.cfg`` in front of test hosts, on 127.0.0.1."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.host import REPO, free_port, get_json, terminate

HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_CONFIG = REPO / "config" / "haproxy.cfg"
# The names config/haproxy.cfg gives its two servers: each host runs with one as its host_id.
SERVER_NAMES = ("a", "b")


class Balancer:
    """``haproxy -f config/haproxy.cfg`` in a subprocess, its settings in the environment as an operator sets them.

    Start it with ``start()`` (waits until it passes requests on), read its
    log (requests and server state changes) with ``log()``, stop it with ``stop()``.
    """

    def __init__(self, haproxy: Path, host_a: str, host_b: str, check_inter: str = "200ms"):
        """Prepare the balancer.

        Args:
            haproxy: The haproxy binary.
            host_a: Server ``a``'s address (host:port), the host run with host_id ``a``.
            host_b: Server ``b``'s address, the host run with host_id ``b``.
            check_inter: How often each host's /readyz is asked (``CHECK_INTER``).
        """
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._args = [str(haproxy), "-db", "-f", str(HAPROXY_CONFIG)]
        self._env = {
            **os.environ,
            "LB_ADDRESS": "127.0.0.1",
            "LB_PORT": str(self.port),
            "HOST_A": host_a,
            "HOST_B": host_b,
            "CHECK_INTER": check_inter,
        }
        self._log = tempfile.NamedTemporaryFile(prefix="haproxy-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Balancer":
        """Start HAProxy and wait until it passes requests on to a host."""
        self.process = subprocess.Popen(
            self._args, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                get_json(f"{self.base_url}/healthz", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"haproxy not listening within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """Everything HAProxy printed so far."""
        return Path(self._log.name).read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until HAProxy has logged ``text`` (e.g. ``Server hosts/a is DOWN``)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy did not log {text!r} within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop HAProxy."""
        if self.process is not None and self.process.poll() is None:
            terminate(self.process)

    def __enter__(self) -> "Balancer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
