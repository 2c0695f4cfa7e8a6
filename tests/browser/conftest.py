"""Fixtures for the real-browser tests: Debian's Chromium driven by Playwright, in a private network namespace.

How the pieces fit:

- ``chromium`` (session): Debian's ``chromium`` package, installed with
  ``apt-get`` when ``/usr/lib/chromium/chromium`` is missing (the
  ``/usr/bin/chromium`` wrapper is not used: it turns background networking
  back on). This runs before the namespace exists, since apt needs the network.
- ``netns`` (package): the pytest *main thread* leaves the machine's network
  namespace for a new one that has only ``lo`` (``unshare(CLONE_NEWNET)``, then
  ``lo`` is brought up). Everything the tests start from that thread (the host
  and its workers, Playwright's driver and Chromium) is born inside it, and the
  test's own HTTP calls to the host go through it too, so every ICE candidate
  is 127.0.0.1 and nothing can leave the machine. At teardown every process
  still inside the namespace is killed (no orphan can survive a failed test)
  and the thread goes back to the original namespace with ``setns`` (the
  file descriptor kept for that), so the rest of the pytest run is unaffected.
  Without the rights for namespaces the tests are skipped, saying why.
- ``browser`` (package): Chromium launched by Playwright with a fake camera
  and a fake microphone that plays :data:`TONE_HZ` from a WAV file made here.
  Playwright's ``launch`` gives it a fresh temporary ``--user-data-dir``.
- ``host_factory`` (function): ``tests.support.host.HostProcess`` instances,
  always stopped at the end of the test; their logs and a screenshot of every
  open page are saved under ``test-artifacts/browser/`` when a test fails.
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
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.browser.pagetools import INSTRUMENT
from tests.support.client import colour_bars
from tests.support.host import REPO, HostProcess

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"

#: The fake microphone's tone; the bot echoes it back.
TONE_HZ = 440.0
TONE_RATE = 48000

#: The fake camera: colour bars (``tests.support.client.BAR_COLOURS``) with a
#: small square moving along the top, this size, at this rate.
CAMERA_SIZE = (320, 240)
CAMERA_FPS = 30

#: No single browser test may take longer than this (SIGALRM), fixtures included.
TEST_TIME_LIMIT_S = 240

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
    # A page's audio plays without a click first (the tests click anyway).
    "--autoplay-policy=no-user-gesture-required",
]


# ---------------------------------------------------------------- Chromium


def _apt_get(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _install_chromium() -> str | None:
    """Installs Debian's chromium; returns why it could not, or None."""
    if os.geteuid() != 0:
        return "Chromium is not installed and installing it needs root (apt-get install -y chromium)"
    if shutil.which("apt-get") is None:
        return "Chromium is not installed and there is no apt-get to install it"
    result = _apt_get("install", "-y", "--no-install-recommends", "chromium", timeout=900)
    if result.returncode != 0:
        # A new machine's package lists may be missing or stale.
        update = _apt_get("update", timeout=600)
        result = _apt_get("install", "-y", "--no-install-recommends", "chromium", timeout=900)
        if result.returncode != 0:
            return f"apt-get install chromium failed:\n{update.stderr[-2000:]}\n{result.stderr[-2000:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is missing"


def _unavailable(reason: str):
    """Skips, except in CI, where a browser test that cannot run is a failure."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium binary, installed if needed."""
    if not CHROMIUM.exists():
        reason = _install_chromium()
        if reason:
            _unavailable(reason)
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("Playwright is not installed: pip install -e '.[test]'")
    return CHROMIUM


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


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def processes_in_namespace(inode: int) -> list[int]:
    """Pids of the processes (other than this one) whose network namespace is ``inode``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


class NetNamespace:
    """The private network namespace the current thread runs in."""

    def __init__(self, inode: int):
        self.inode = inode

    @staticmethod
    def interfaces() -> list[str]:
        """The network interfaces this thread sees."""
        return [name for _, name in socket.if_nameindex()]

    def processes(self) -> list[int]:
        """The other processes inside the namespace."""
        return processes_in_namespace(self.inode)

    def kill_all(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM then SIGKILL every process left in the namespace; returns what was left."""
        left = {pid: _cmdline(pid) for pid in self.processes()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.processes() and time.monotonic() < deadline:
                _reap_children()
                time.sleep(0.1)
        _reap_children()
        return [f"{pid}: {cmd}" for pid, cmd in left.items()]


def _reap_children() -> None:
    # Zombies of ours that no Popen waits for any more.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


@pytest.fixture(scope="package")
def netns(chromium) -> NetNamespace:
    """Moves this thread into a new network namespace with only ``lo`` (up) for the package's tests."""
    if not hasattr(socket, "if_nameindex") or not Path("/proc/thread-self/ns/net").exists():
        _unavailable("network namespaces need Linux")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _libc_call("unshare", _CLONE_NEWNET)
    except OSError as e:
        os.close(original)
        if e.errno in (errno.EPERM, errno.EINVAL, errno.ENOSYS):
            _unavailable(f"cannot create a network namespace (needs root or CAP_SYS_ADMIN): {e}")
        raise
    namespace = NetNamespace(_netns_inode("/proc/thread-self/ns/net"))
    try:
        _bring_up_loopback()
        assert namespace.interfaces() == ["lo"], namespace.interfaces()
        yield namespace
    finally:
        left = namespace.kill_all()
        _libc_call("setns", original, _CLONE_NEWNET)
        os.close(original)
    assert not left, f"processes left running in the test namespace (killed): {left}"


# ---------------------------------------------------------------- browser


def write_tone_wav(path: Path, frequency: float = TONE_HZ, seconds: float = 2.0, rate: int = TONE_RATE) -> Path:
    """A mono 16-bit WAV of a sine tone; a whole number of periods so Chromium's loop has no click."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    samples = (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def write_bars_y4m(path: Path, size=CAMERA_SIZE, fps: int = CAMERA_FPS, seconds: float = 2.0) -> Path:
    """A Y4M (I420) video of colour bars; a 16-pixel white square crosses the top eighth, so frames differ."""
    import av

    width, height = size
    bars = colour_bars(width, height)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for index in range(int(fps * seconds)):
            rgb = bars.copy()
            x = index * (width - 16) // int(fps * seconds)
            rgb[4:20, x : x + 16] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.write(b"FRAME\n")
            for plane, (w, h) in zip(frame.planes, [(width, height), (width // 2, height // 2), (width // 2, height // 2)]):
                data = np.frombuffer(plane, dtype=np.uint8).reshape(h, plane.line_size)[:, :w]
                out.write(data.tobytes())
    return path


@pytest.fixture(scope="package")
def fake_media(tmp_path_factory) -> dict[str, Path]:
    """The fake microphone's and camera's inputs."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "audio": write_tone_wav(folder / f"tone-{int(TONE_HZ)}hz.wav"),
        "video": write_bars_y4m(folder / "bars.y4m"),
    }


@pytest.fixture(scope="package")
def browser(netns, chromium, fake_media):
    """Headless Chromium inside the namespace; its fake camera shows colour bars, its fake microphone plays the tone."""
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


@pytest.fixture
def new_page(browser, request):
    """Opens pages in fresh browser contexts; closes them after the test, screenshotting them on failure."""
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
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for index, page in enumerate(opened):
        if failed:
            with contextlib.suppress(Exception):
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=ARTIFACTS / f"{request.node.name}-failed-{index}.png", full_page=True)
                print(f"page {index} console:\n" + "\n".join(page.console_lines))
        with contextlib.suppress(Exception):
            page.context.close()


@pytest.fixture
def host_factory(netns, request):
    """Starts ``HostProcess`` instances inside the namespace; stops them (and their workers) after the test."""
    hosts: list[HostProcess] = []

    def start(workers: int = 1, *args: str) -> HostProcess:
        host = HostProcess(workers, *args)
        hosts.append(host)
        return host.start(timeout=60)

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for index, host in enumerate(hosts):
        with contextlib.suppress(Exception):
            host.stop()
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"{request.node.name}-host-{index}.log").write_text(host.log())
    # The host stops its workers; any of its processes still running is an orphan: kill it and say so.
    def host_processes():
        return [pid for pid in netns.processes() if "engine.cli" in _cmdline(pid)]

    deadline = time.monotonic() + 10
    while host_processes() and time.monotonic() < deadline:
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
def _time_limit(request):
    """Bounds every browser test (setup and teardown of function fixtures included)."""

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.name} took longer than {TEST_TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
