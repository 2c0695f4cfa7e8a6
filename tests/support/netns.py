"""Network namespaces for tests: the processes inside one, and a small routed topology with NAT.

:class:`NatTopology` builds, with iproute2 and iptables, five namespaces
joined by veth pairs and never linked to the machine's own network::

    client 10.71.1.2 -- 10.71.1.1 router 203.0.113.1 ---- 203.0.113.2 edge 10.72.0.1 -- 10.72.0.2 host
                          (MASQUERADE)                    (1:1 NAT of 203.0.113.10)
                                                          192.0.2.1
                                                              |
                                                          192.0.2.2 turn

- ``client`` sits behind ``router``, which masquerades it as 203.0.113.1 (a
  home or office NAT);
- ``host`` has the private address 10.72.0.2, which ``edge`` maps 1:1 to the
  public address 203.0.113.10 (DNAT in, SNAT out: a cloud VM's public IP);
- ``turn`` is a server on the public side (192.0.2.2), for coturn.

The middle link can be a userspace "wire" (``tests.support.wire``) that
drops and delays frames, for tests of a lossy path. Every namespace is named
with this process's id, so concurrent runs do not collide; :meth:`NatTopology.close`
kills every process left in them and deletes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.debian import debian_tool, unavailable

CLONE_NEWNET = 0x40000000

IP = Path("/usr/sbin/ip")
IPTABLES = Path("/usr/sbin/iptables")

CLIENT_ADDRESS = "10.71.1.2"
CLIENT_PUBLIC_ADDRESS = "203.0.113.1"
HOST_ADDRESS = "10.72.0.2"
HOST_PUBLIC_ADDRESS = "203.0.113.10"
TURN_ADDRESS = "192.0.2.2"

#: Namespace names are this, the test process's id, a dash and the namespace's role.
NAMESPACE_PREFIX = "swh"
#: The program that forwards frames across the lossy wire.
WIRE_MODULE = "tests.support.wire"


def libc_call(name: str, *args) -> None:
    """Call a libc function that returns 0 on success; raise OSError with its errno otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def cmdline(pid: int) -> str:
    """A process's command line (the first 160 characters), or ``?``."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def reap_children() -> None:
    """Collect the zombies of our children that no Popen waits for any more."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class NetNamespace:
    """A network namespace, known by its inode, and the processes inside it."""

    def __init__(self, inode: int):
        self.inode = inode

    @staticmethod
    def interfaces() -> list[str]:
        """The network interfaces the calling thread sees."""
        return [name for _, name in socket.if_nameindex()]

    def processes(self) -> list[int]:
        """The processes, other than this one, inside the namespace."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == self.inode:
                    found.append(int(entry))
        return found

    def kill_all(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM, then SIGKILL, every process left in the namespace; returns what was left."""
        left = [f"{pid}: {cmdline(pid)}" for pid in self.processes()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.processes() and time.monotonic() < deadline:
                reap_children()
                time.sleep(0.1)
        reap_children()
        return left


class NamedNamespace(NetNamespace):
    """A namespace made with ``ip netns add NAME`` (so ``ip netns exec NAME`` runs programs in it)."""

    def __init__(self, name: str, create: bool = True):
        """Make the namespace (with ``lo`` up), or with ``create=False`` take one made earlier."""
        if create:
            run([str(IP), "netns", "add", name])
        self.name = name
        super().__init__(os.stat(f"/run/netns/{name}").st_ino)
        if create:
            self.run(str(IP), "link", "set", "lo", "up")

    def exec_prefix(self) -> list[str]:
        """What to put before a command to run it in this namespace."""
        return [str(IP), "netns", "exec", self.name]

    def run(self, *command: str, timeout: float = 30.0) -> str:
        """Run a command in this namespace; its output. Raises with the output if it fails."""
        return run([*self.exec_prefix(), *command], timeout=timeout)

    def popen(self, *command: str, **kwargs) -> subprocess.Popen:
        """Start a program in this namespace (``subprocess.Popen``'s other arguments as given)."""
        return subprocess.Popen([*self.exec_prefix(), *command], **kwargs)

    def iptables(self, *rule: str) -> None:
        """Add an iptables rule in this namespace."""
        self.run(str(IPTABLES), "-w", *rule)

    def forward(self) -> None:
        """Route packets between this namespace's interfaces."""
        self.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread is in this namespace meanwhile: its sockets and the processes it starts are."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            libc_call("setns", target, CLONE_NEWNET)
            try:
                yield
            finally:
                libc_call("setns", original, CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(original)

    def delete(self) -> list[str]:
        """Kill what is left inside and delete the namespace; returns what was left running."""
        left = self.kill_all()
        subprocess.run([str(IP), "netns", "delete", self.name], check=False, capture_output=True, timeout=30)
        return left


def run(command: Sequence[str], timeout: float = 30.0) -> str:
    """Run a command; its output. Raises RuntimeError with the output if it fails."""
    result = subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def link(a: NamedNamespace, a_name: str, a_address: str, b: NamedNamespace, b_name: str, b_address: str) -> None:
    """A veth pair from ``a`` to ``b``, with an address (``10.0.0.1/24``, or empty for none) at each end, up."""
    run([str(IP), "link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name, "netns", b.name])
    for namespace, name, address in ((a, a_name, a_address), (b, b_name, b_address)):
        if address:
            namespace.run(str(IP), "addr", "add", address, "dev", name)
        namespace.run(str(IP), "link", "set", name, "up")


@dataclass
class Impairment:
    """What the wire between the two NATs does to every frame, each way (as ``tc netem`` would)."""

    loss: float = 0.05
    delay_ms: float = 100.0
    seed: int = 1


class NatTopology:
    """A client behind a NAT and a host behind a 1:1 NAT, routed to each other (see the module's docstring).

    Attributes:
        client, router, edge, host, turn: The namespaces.
        wire: The namespace of the lossy wire, with ``impairment``.
        wire_process: The wire's forwarding process, with ``impairment``.
    """

    def __init__(self, impairment: Impairment | None = None):
        """Build the topology (removed again if building fails).

        Args:
            impairment: Put a lossy, slow wire between the router and the edge.
        """
        self.namespaces: list[NamedNamespace] = []
        self.wire: NamedNamespace | None = None
        self.wire_process: subprocess.Popen | None = None
        try:
            self._build(impairment)
        except BaseException:
            self.close()
            raise

    def _namespace(self, role: str) -> NamedNamespace:
        namespace = NamedNamespace(f"{NAMESPACE_PREFIX}{os.getpid()}-{role}")
        self.namespaces.append(namespace)
        return namespace

    def _build(self, impairment: Impairment | None) -> None:
        self.client, self.router, self.edge = self._namespace("client"), self._namespace("router"), self._namespace("edge")
        self.host, self.turn = self._namespace("host"), self._namespace("turn")
        link(self.client, "eth0", f"{CLIENT_ADDRESS}/24", self.router, "lan", "10.71.1.1/24")
        link(self.host, "eth0", f"{HOST_ADDRESS}/24", self.edge, "lan", "10.72.0.1/24")
        link(self.turn, "eth0", f"{TURN_ADDRESS}/24", self.edge, "dmz", "192.0.2.1/24")
        if impairment is None:
            link(self.router, "wan", f"{CLIENT_PUBLIC_ADDRESS}/24", self.edge, "wan", "203.0.113.2/24")
        else:
            self.wire = self._namespace("wire")
            link(self.router, "wan", f"{CLIENT_PUBLIC_ADDRESS}/24", self.wire, "west", "")
            link(self.edge, "wan", "203.0.113.2/24", self.wire, "east", "")
            for side in ("west", "east"):
                # The wire's ends take every frame: they are the two NATs' link, not hosts on it.
                self.wire.run(str(IP), "link", "set", side, "promisc", "on")
            self.wire_process = self.wire.popen(
                sys.executable, "-m", WIRE_MODULE, "west", "east",
                "--loss", str(impairment.loss), "--delay-ms", str(impairment.delay_ms), "--seed", str(impairment.seed),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
            )
            ready, _, _ = select.select([self.wire_process.stdout], [], [], 30)
            if not ready or self.wire_process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the wire did not start: {self.stop_wire()}")
        self.client.run(str(IP), "route", "add", "default", "via", "10.71.1.1")
        self.host.run(str(IP), "route", "add", "default", "via", "10.72.0.1")
        self.turn.run(str(IP), "route", "add", "default", "via", "192.0.2.1")
        self.router.run(str(IP), "route", "add", "default", "via", "203.0.113.2")
        self.edge.run(str(IP), "route", "add", "default", "via", CLIENT_PUBLIC_ADDRESS)
        # The public address is the edge's to answer for; it hands what arrives for it to the host.
        self.edge.run(str(IP), "addr", "add", f"{HOST_PUBLIC_ADDRESS}/32", "dev", "wan")
        for router in (self.router, self.edge):
            router.forward()
        self.router.iptables("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
        self.edge.iptables("-t", "nat", "-A", "PREROUTING", "-d", HOST_PUBLIC_ADDRESS, "-j", "DNAT", "--to-destination", HOST_ADDRESS)
        self.edge.iptables("-t", "nat", "-A", "POSTROUTING", "-s", HOST_ADDRESS, "!", "-o", "lan", "-j", "SNAT", "--to-source", HOST_PUBLIC_ADDRESS)

    def allow_only_udp_ports(self, first: int, last: int) -> None:
        """The host's firewall drops every UDP datagram from outside but those to ports ``first``-``last``."""
        self.host.iptables("-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
        self.host.iptables("-A", "INPUT", "-p", "udp", "--dport", f"{first}:{last}", "-j", "ACCEPT")
        self.host.iptables("-A", "INPUT", "-p", "udp", "-j", "DROP")

    def block_client_udp(self) -> None:
        """The client's NAT forwards no UDP at all (an office firewall that lets only TCP out)."""
        self.router.iptables("-A", "FORWARD", "-i", "lan", "-p", "udp", "-j", "DROP")

    def stop_wire(self) -> dict:
        """Stop the wire's process; what it counted (frames forwarded and dropped each way)."""
        process, self.wire_process = self.wire_process, None
        if process is None:
            return {}
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        lines = out.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"the wire exited with {process.returncode}, printing no counts: {err[-2000:]}")
        return json.loads(lines[-1])

    def close(self) -> list[str]:
        """Delete every namespace, and so every link; returns the processes that were still running (killed)."""
        if self.wire_process is not None:
            with contextlib.suppress(Exception):
                self.stop_wire()
        left = []
        for namespace in reversed(self.namespaces):
            left.extend(namespace.delete())
        self.namespaces.clear()
        return left


def network_tools() -> None:
    """iproute2 and iptables, installed if missing; skips (fails in CI) without them or without root.

    Namespaces left by a test process that was killed before its teardown are deleted.
    """
    if os.geteuid() != 0:
        unavailable("network namespaces, veth links and iptables need root")
    debian_tool(IP, "iproute2")
    debian_tool(IPTABLES, "iptables")
    for name in run([str(IP), "netns", "list"]).split():
        owner = name.removeprefix(NAMESPACE_PREFIX).partition("-")[0]
        if name.startswith(NAMESPACE_PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            NamedNamespace(name, create=False).delete()
