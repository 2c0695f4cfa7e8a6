"""The engine's end of the link to its workers: who joins, who is heard, who is lost.

It binds the ROUTER socket the workers connect to (behind CurveZMQ when
configured), registers the workers that join, reads their heartbeats and
sends the engine's. It knows nothing of peers: it hands its owner each
session message a worker sends, and each worker it declares lost.

Who may speak for a worker: on a Curve link, a worker id is bound to the key
the worker registered with, and nothing sent under that id with another key
is taken; on an ipc:// link, only this user can connect at all.
"""

import asyncio
import getpass
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio
from loguru import logger
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import recv_monitor_message

from engine.common.link import LinkSocket, bind_router, frames, send_to_worker_now, sender_key
from engine.common.protocol import (
    EngineHeartbeat,
    MediaLane,
    SessionMessage,
    WorkerAccept,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
    decode_from_worker,
)
from engine.common.settings import HostSettings
from engine.registry import WorkerHandle, WorkerRegistry

# The private directory of an engine's ipc socket and its local workers' keys:
# <tmp>/smallwebrtc-host-<engine pid>-<random>.
RUNTIME_DIR_PREFIX = "smallwebrtc-host-"
# The key pair an engine makes for its local workers on a Curve link (NAME.key, NAME.key_secret),
# and its own public key for them, in its runtime directory.
LOCAL_WORKER_KEY_NAME = "local-worker"
ENGINE_PUBLIC_KEY_FILE = "engine.key"


def remove_stale_runtime_dirs() -> None:
    """Remove the runtime directories of engines that died without removing theirs (kill -9, a crash)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUNTIME_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(RUNTIME_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.owner() != getpass.getuser():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info(f"removing {path}: the engine that made it (pid {pid}) is gone")
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def make_runtime_dir() -> str:
    """A new directory that only this user may enter, for the engine's ipc socket and its local workers' keys.

    Its mode, 0700, is what keeps the machine's other users off a private
    link: they could otherwise connect to the socket as a worker, or read the
    keys. mkdtemp makes it so; a file system that ignores modes would not, so
    the mode is checked.

    Raises:
        RuntimeError: If the directory is not private after all.
    """
    path = tempfile.mkdtemp(prefix=f"{RUNTIME_DIR_PREFIX}{os.getpid()}-")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o700:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError(f"{path} has mode {mode:o}, not 700: other users could reach the engine's workers")
    return path


def local_endpoint(bound: str) -> str:
    """Where a process on this machine reaches a socket bound to ``bound``: a wildcard address through loopback."""
    for wildcard, loopback in (("tcp://0.0.0.0:", "tcp://127.0.0.1:"), ("tcp://[::]:", "tcp://[::1]:")):
        if bound.startswith(wildcard):
            return loopback + bound.removeprefix(wildcard)
    return bound


def write_public_key(path: str, public_key: bytes) -> None:
    """Write a public key file (NAME.key) as ``zmq.auth.load_certificate`` reads it."""
    Path(path).write_text(f'curve\n    public-key = "{public_key.decode()}"\n')


@dataclass(frozen=True)
class LocalWorkerAccess:
    """How a worker on this machine joins the engine.

    Parameters:
        endpoint: Where it connects.
        curve_secret_key_file: Its secret key file on a Curve link, else empty.
        curve_server_key_file: The engine's public key file on a Curve link, else empty.
    """

    endpoint: str
    curve_secret_key_file: str = ""
    curve_server_key_file: str = ""


@dataclass(frozen=True)
class AuthorizedKeys:
    """The public keys (z85) of the workers the engine lets in; pyzmq's authenticator asks ``callback``."""

    keys: frozenset[bytes]

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether a connecting worker's key is one of them."""
        return key in self.keys


OnSessionMessage = Callable[[WorkerHandle, SessionMessage, list], None]
OnWorkerLost = Callable[[WorkerHandle, str], None]
OnWorkerHeard = Callable[[WorkerHandle], None]


class WorkerLink:
    """The ROUTER socket the workers join, the registry of those that did, and the heartbeats both ways."""

    def __init__(
        self,
        settings: HostSettings,
        engine_id: str,
        on_session_message: OnSessionMessage,
        on_worker_lost: OnWorkerLost,
        on_drop: Callable[[MediaLane], None] | None = None,
        on_heartbeat: OnWorkerHeard | None = None,
    ):
        """Initialize the link; ``start()`` binds it.

        Args:
            settings: Host settings (endpoint, CurveZMQ keys, heartbeat timing).
            engine_id: What the engine calls itself to the workers that join.
            on_session_message: Called with a registered worker's handle, a
                message it sent about one session, and the message's payload frames.
            on_worker_lost: Called with a worker's handle and why, once it is
                out of the registry (process exited, silent, stuck, or registered again).
            on_drop: Called with the lane of every media item an outbox to a worker drops.
            on_heartbeat: Called with a registered worker's handle after each of its
                heartbeats (its load and the sessions it runs are on the handle).
        """
        self.settings = settings
        self.engine_id = engine_id
        self.endpoint = settings.engine_endpoint
        self.local_access: LocalWorkerAccess | None = None
        self.registry: WorkerRegistry | None = None
        self.loop_lag_ms = 0.0
        self._on_session_message = on_session_message
        self._on_worker_lost = on_worker_lost
        self._on_drop = on_drop
        self._on_heartbeat = on_heartbeat
        self._runtime_dir: str | None = None
        # The authenticator and the refusals' monitor are asyncio sockets; the link's own is plain (LinkSocket).
        self._context = zmq.asyncio.Context()
        self._router: LinkSocket | None = None
        self._authenticator: AsyncioAuthenticator | None = None
        self._tasks: list[asyncio.Task] = []
        self._local_workers: dict[str, asyncio.subprocess.Process] = {}
        self.log = logger.bind(engine_id=engine_id)

    def start(self) -> None:
        """Bind the socket (on a private ipc endpoint if none is set) and serve the workers.

        The endpoint then reads as bound (a tcp port given as ``*`` resolved),
        and ``local_access`` tells how this machine's workers join.

        Raises:
            ValueError: If ``curve_authorized_keys_dir`` is not a directory.
            RuntimeError: If the private runtime directory is not private.
        """
        remove_stale_runtime_dirs()
        self._runtime_dir = make_runtime_dir()
        if not self.endpoint:
            self.endpoint = f"ipc://{self._runtime_dir}/engine.sock"
        local_keys = self._start_authenticator() if self.settings.curve_secret_key_file else ()
        router = bind_router(
            zmq.Context.shadow(self._context.underlying),
            self.endpoint,
            self.settings.curve_secret_key_file,
            self.settings.worker_dead_after_s,
        )
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.local_access = LocalWorkerAccess(local_endpoint(self.endpoint), *local_keys)
        self._router = LinkSocket(router, self._handle)
        self.registry = WorkerRegistry(self._router, self._on_drop)
        self._tasks = [asyncio.create_task(self._supervise(), name="engine-supervise")]
        if self._authenticator is not None:
            self._tasks.append(asyncio.create_task(self._log_refusals(), name="engine-refusals"))
        self.log.info(f"engine {self.engine_id} listening for workers on {self.endpoint}")

    def _start_authenticator(self) -> tuple[str, str]:
        """Let in only the workers whose public key is in curve_authorized_keys_dir, and this engine's local workers.

        The local workers get a key pair made for this run, in the private
        runtime directory (only this user reads it, and it goes with the
        engine), so the operator makes and authorizes keys for remote workers
        only, and a local worker's key is worth nothing once its engine stops.
        The directory's keys are read once, here.

        Returns:
            The local workers' secret key file and the engine's public key file.
        """
        keys_dir = self.settings.curve_authorized_keys_dir
        if not os.path.isdir(keys_dir):
            raise ValueError(f"curve_authorized_keys_dir: {keys_dir!r} is not a directory")
        local_public_file, local_secret_file = zmq.auth.create_certificates(self._runtime_dir, LOCAL_WORKER_KEY_NAME)
        local_public_key, _ = zmq.auth.load_certificate(local_public_file)
        _, engine_secret_key = zmq.auth.load_certificate(self.settings.curve_secret_key_file)
        engine_public_file = os.path.join(self._runtime_dir, ENGINE_PUBLIC_KEY_FILE)
        write_public_key(engine_public_file, zmq.curve_public(engine_secret_key))
        authorized = AuthorizedKeys(frozenset(zmq.auth.load_certificates(keys_dir)) | {local_public_key})
        self._authenticator = AsyncioAuthenticator(self._context)
        self._authenticator.start()
        self._authenticator.configure_curve_callback(domain="*", credentials_provider=authorized)
        return local_secret_file, engine_public_file

    async def _log_refusals(self) -> None:
        # As get_monitor_socket does, with the monitor's end an asyncio socket (the router is a plain one).
        router = self._router.socket
        address = f"inproc://monitor.engine-{self.engine_id}"
        router.monitor(address, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        monitor = self._context.socket(zmq.PAIR)
        monitor.connect(address)
        try:
            while True:
                event = await recv_monitor_message(monitor)
                self.log.error(
                    f"refused a worker connection on {event['endpoint'].decode(errors='replace')}: "
                    "its key is not in curve_authorized_keys_dir (or it does not speak CurveZMQ)"
                )
        finally:
            if not router.closed:
                router.disable_monitor()
            monitor.close(linger=0)

    def watch_local_worker(self, worker_id: str, process: asyncio.subprocess.Process) -> None:
        """Declare a worker lost as soon as its local process exits, not only when its heartbeats stop."""
        self._local_workers[worker_id] = process

    async def stop(self) -> None:
        """Tell the workers to leave, and release the socket and its files."""
        for handle in self.registry or []:
            handle.outbox.send(WorkerStop("engine stopping"))
        # Give the pumps a moment to deliver the stops before the socket goes.
        await asyncio.sleep(0.2)
        for task in self._tasks:
            task.cancel()
        # Their sockets (the refusals' monitor) close as they end; the context waits for every socket.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self.registry or []:
            self.registry.remove(handle, "engine stopped")
        if self._router is not None:
            self._router.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()
        if self._runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def _handle(self, parts: list[zmq.Frame]) -> None:
        identity = parts[0].bytes.decode(errors="replace")
        try:
            message = decode_from_worker(parts[1].buffer)
        except (msgspec.DecodeError, IndexError) as e:
            self.log.warning(f"dropping an unreadable message from worker {identity}: {e}")
            return
        try:
            # Without Curve there is no key to ask for (and asking costs an exception per message).
            key = sender_key(parts[1]) if self.settings.curve_secret_key_file else None
            self._dispatch(identity, key, message, parts[2:])
        except Exception:
            self.log.exception(f"error handling {type(message).__name__} from worker {identity}")

    def _dispatch(self, worker_id: str, key: str | None, message, payload: list) -> None:
        handle = self.registry.get(worker_id)
        if handle is not None and handle.key != key:
            self._refuse_other_key(handle, key, message)
            return
        if isinstance(message, WorkerRegister):
            self._register(worker_id, key, message)
            return
        if handle is None:
            self.log.debug(f"ignoring {type(message).__name__} from unregistered worker {worker_id}")
            if isinstance(message, WorkerHeartbeat):
                # A worker declared lost that lives on (it was stopped, or cut off) still runs the bots
                # of sessions that moved elsewhere: it is told to stop them.
                self._send_now(worker_id, WorkerStop("this engine declared the worker lost: its sessions moved"))
            return
        if isinstance(message, WorkerHeartbeat):
            handle.heard(message)
            if self._on_heartbeat is not None:
                self._on_heartbeat(handle)
            return
        handle.heard()
        if isinstance(message, SessionMessage):
            self._on_session_message(handle, message, payload)

    def _send_now(self, worker_id: str, message) -> None:
        """Send to a worker with no outbox, if its pipe takes it now; else it is told at its next heartbeat."""
        if send_to_worker_now(self._router, worker_id.encode(), frames(message)) is not True:
            self.log.debug(f"could not tell worker {worker_id} {type(message).__name__} now")

    def _refuse_other_key(self, handle: WorkerHandle, key: str | None, message) -> None:
        """Take nothing sent under a registered worker's id with a key other than the one it registered with.

        The socket lets one connection at a time hold an id, so such a message
        means the worker's own connection is gone and another holds its id:
        everything the engine sent the worker would now reach that connection.
        So the worker is lost at once (its sessions move to other workers),
        rather than kept until its heartbeats are missed.
        """
        if isinstance(message, WorkerRegister):
            self.log.error(
                f"refused a registration as worker {handle.worker_id} with key {key}: "
                f"that worker registered with key {handle.key}"
            )
        else:
            self.log.warning(
                f"dropped {type(message).__name__} sent as worker {handle.worker_id} with key {key}: "
                f"that worker registered with key {handle.key}"
            )
        self.lose(handle, "its id is held by a connection with another key")

    def _register(self, worker_id: str, key: str | None, message: WorkerRegister) -> None:
        existing = self.registry.get(worker_id)
        if existing is not None:
            self.lose(existing, "registered again (restarted)")
        # A worker takes at most the engine's worker_capacity: one that claimed more would draw
        # every new session before the others filled.
        capacity = min(message.capacity, self.settings.worker_capacity)
        if capacity < message.capacity:
            self.log.warning(
                f"worker {worker_id} claims capacity {message.capacity}; it gets this engine's worker_capacity, {capacity}"
            )
        handle = self.registry.add(worker_id, message.pid, message.hostname, capacity, key)
        handle.outbox.send(WorkerAccept(self.engine_id))
        with_key = f", key {key}" if key else ""
        self.log.info(
            f"worker {worker_id} joined (pid {message.pid} on {message.hostname}, capacity {handle.capacity}{with_key})"
        )

    def lose(self, handle: WorkerHandle, reason: str) -> None:
        """Declare a worker lost: out of the registry, and its owner told (who moves its sessions).

        A local worker that still runs (hung, stopped, deadlocked) is killed
        first: woken later, it would run its sessions' bots beside the ones
        they moved to. A remote one is told to stop when it is next heard.
        """
        process = self._local_workers.get(handle.worker_id)
        if process is not None and process.pid == handle.pid and process.returncode is None:
            self.log.warning(f"killing worker {handle.worker_id} (pid {process.pid}): {reason}")
            process.kill()
        self.registry.remove(handle, reason)
        self._on_worker_lost(handle, reason)

    async def _supervise(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, 0.5)
        next_heartbeat = 0.0
        while True:
            now = time.monotonic()
            expected = now + interval
            for handle in self.registry:
                process = self._local_workers.get(handle.worker_id)
                if process is not None and process.returncode is not None:
                    self.lose(handle, f"process exited with code {process.returncode}")
                elif not handle.alive:
                    self.lose(handle, handle.lost_reason or handle.outbox.broken)
                elif now - handle.last_seen > self.settings.worker_dead_after_s:
                    self.lose(handle, f"no heartbeat for {now - handle.last_seen:.1f} s")
                elif now >= next_heartbeat:
                    handle.outbox.send(EngineHeartbeat())
            if now >= next_heartbeat:
                next_heartbeat = now + self.settings.heartbeat_interval_s
            await asyncio.sleep(interval)
            # How late the loop woke up: every peer of this engine waited as long.
            self.loop_lag_ms = max(0.0, (time.monotonic() - expected) * 1000)
