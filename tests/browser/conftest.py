"""Fixtures for the real-browser tests: Debian's Chromium driven by Playwright, in a private network namespace.

How the pieces fit:

- ``chromium`` (session): Debian's ``chromium`` package, installed with
  ``apt-get`` when ``/usr/lib/chromium/chromium`` is missing (``apt-get update``
  first if the install fails). The ``/usr/bin/chromium`` wrapper is not used:
  it turns background networking back on. This runs before any namespace
  exists, since apt needs the network. ``npm`` (session) is the same for
  Debian's ``npm`` package, when there is no ``npm`` on the ``PATH``.
- ``netns`` (module): the pytest *main thread* leaves the machine's network
  namespace for a new one that has only ``lo`` (``unshare(CLONE_NEWNET)``, then
  ``lo`` is brought up with an ioctl). Everything the tests start from that
  thread (the host and its workers, Playwright's driver and Chromium) is born
  inside it, and the tests' own HTTP calls to the host are made from it, so
  every ICE candidate is 127.0.0.1 and nothing can leave the machine. At
  teardown every process still inside the namespace is killed (it is found by
  the namespace's inode in ``/proc/*/ns/net``, so no orphan survives a failed
  test) and the thread goes back with ``setns`` to the original namespace,
  whose file descriptor it kept: the rest of the pytest run is unaffected.
  Without the rights for namespaces (root or CAP_SYS_ADMIN) the tests are
  skipped, saying why; in CI (``CI=true``) that is a failure instead.
- ``browser`` (module): Chromium launched by Playwright inside the namespace,
  with the fake camera and microphone of ``fakemedia`` (colour bars, a 440 Hz
  tone). Playwright's ``launch`` gives it a fresh temporary ``--user-data-dir``.
- ``new_page`` and ``host_factory`` (function): pages in fresh browser
  contexts, and ``tests.support.host.HostProcess`` instances; all closed and
  stopped after the test. When a test fails, a screenshot of each page, its
  console and the host's log are saved under ``test-artifacts/browser/``.
- Every browser test is bounded: SIGALRM fails it after ``TEST_TIME_LIMIT_S``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.browser.fakemedia import write_bars_y4m, write_tone_wav
from tests.browser.pagetools import ARTIFACTS, INSTRUMENT
from tests.support.debian import debian_tool, unavailable
from tests.support.host import HostProcess

CHROMIUM = Path("/usr/lib/chromium/chromium")
NPM = Path("/usr/bin/npm")

#: No single browser test may take longer than this, its function-scoped fixtures included.
TEST_TIME_LIMIT_S = 300

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Pages play audio without a click first (the tests click anyway).
    "--autoplay-policy=no-user-gesture-required",
]


# ---------------------------------------------------------------- Chromium


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium binary, installed if needed."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        unavailable("Playwright is not installed: pip install -e '.[test]'")
    return debian_tool("chromium", CHROMIUM)


@pytest.fixture(scope="session")
def npm() -> str:
    """npm, for the tests that build a web client from the npm registry: Debian's, installed if there is none."""
    found = shutil.which("npm")
    if found is None:
        found = str(debian_tool("npm", NPM))
    return found


# ---------------------------------------------------------------- network namespace

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def _reap_children() -> None:
    # Zombies of ours that no Popen waits for any more.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class NetNamespace:
    """The private network namespace the test thread runs in."""

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
        left = [f"{pid}: {_cmdline(pid)}" for pid in self.processes()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.processes() and time.monotonic() < deadline:
                _reap_children()
                time.sleep(0.1)
        _reap_children()
        return left


@pytest.fixture(scope="module")
def netns(chromium):
    """Moves the test thread into a new network namespace with only ``lo`` (up) for the module's tests."""
    if not hasattr(socket, "if_nameindex") or not Path("/proc/thread-self/ns/net").exists():
        unavailable("network namespaces need Linux")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _libc_call("unshare", _CLONE_NEWNET)
    except OSError as e:
        os.close(original)
        if e.errno in (errno.EPERM, errno.EINVAL, errno.ENOSYS):
            unavailable(f"cannot make a private network namespace (needs root or CAP_SYS_ADMIN): {e}")
        raise
    namespace = NetNamespace(os.stat("/proc/thread-self/ns/net").st_ino)
    left = []
    try:
        _bring_up_loopback()
        assert namespace.interfaces() == ["lo"], namespace.interfaces()
        yield namespace
    finally:
        left = namespace.kill_all()
        _libc_call("setns", original, _CLONE_NEWNET)
        os.close(original)
    assert not left, f"processes were still running in the test namespace (killed): {left}"


# ---------------------------------------------------------------- browser and host


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory) -> dict[str, Path]:
    """The fake microphone's and camera's inputs."""
    folder = tmp_path_factory.mktemp("media")
    return {"audio": write_tone_wav(folder / "tone.wav"), "video": write_bars_y4m(folder / "bars.y4m")}


@pytest.fixture(scope="module")
def browser(netns, chromium, fake_media):
    """Headless Chromium inside the namespace; its camera shows colour bars, its microphone plays the tone."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=[
                *CHROMIUM_FLAGS,
                f"--use-file-for-fake-audio-capture={fake_media['audio']}",
                f"--use-file-for-fake-video-capture={fake_media['video']}",
            ],
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()


def _failed(request) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@pytest.fixture
def new_page(browser, request):
    """Opens pages, each in a fresh browser context, instrumented by ``pagetools.INSTRUMENT``."""
    opened = []

    def open_page(url: str | None = None):
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(30_000)
        context.add_init_script(INSTRUMENT)
        page = context.new_page()
        page.console_lines = []
        page.on("console", lambda msg: page.console_lines.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: page.console_lines.append(f"pageerror: {err}"))
        opened.append(page)
        if url:
            page.goto(url)
        return page

    yield open_page
    failed = _failed(request)
    for index, page in enumerate(opened):
        if failed:
            with contextlib.suppress(Exception):
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=ARTIFACTS / f"{request.node.name}-failed-page{index}.png", full_page=True)
                (ARTIFACTS / f"{request.node.name}-failed-page{index}-console.txt").write_text(
                    "\n".join(page.console_lines)
                )
        with contextlib.suppress(Exception):
            page.context.close()


@pytest.fixture
def host_factory(netns, request):
    """Starts ``HostProcess(workers, *args, **options)`` inside the namespace; stops it and its workers after the test."""
    hosts: list[HostProcess] = []

    def start(workers: int = 1, *args: str, **options) -> HostProcess:
        host = HostProcess(workers, *args, **options)
        hosts.append(host)
        return host.start(timeout=60)

    yield start
    failed = _failed(request)
    for index, host in enumerate(hosts):
        with contextlib.suppress(Exception):
            host.stop()
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"{request.node.name}-failed-host{index}.log").write_text(host.log())

    # The host stops its workers; any of its processes still running is an orphan: kill it and say so.
    def host_processes():
        return [pid for pid in netns.processes() if any(m in _cmdline(pid) for m in ("engine.cli", "-m workers"))]

    deadline = time.monotonic() + 10
    while host_processes() and time.monotonic() < deadline:
        _reap_children()
        time.sleep(0.1)
    left = [f"{pid}: {_cmdline(pid)}" for pid in host_processes()]
    for pid in host_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"host processes outlived their host (killed): {left}"


# ---------------------------------------------------------------- hooks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _no_stale_failure_artifacts(request):
    """A test's failure artifacts from an earlier run would mislead: they go when it runs again."""
    for path in ARTIFACTS.glob(f"{request.node.name}-failed-*"):
        path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _time_limit(request):
    """Bounds every browser test (its function-scoped fixtures included)."""

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.name} took longer than {TEST_TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
