"""A worker process: joins an engine, hosts bot sessions, and leaves when told or when the engine goes silent."""

import asyncio
import importlib
import importlib.util
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import msgspec
import zmq
from loguru import logger
from pipecat.utils.file_storage import FileStorage

from engine.common.diagnostics import live_objects
from engine.common.link import LinkSocket, Outbox, connect_dealer
from engine.common.protocol import (
    EngineHeartbeat,
    SessionClose,
    SessionMessage,
    SessionOpen,
    WorkerAccept,
    WorkerDrain,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerStop,
    decode_from_engine,
)
from engine.common.settings import BotSpec, HostSettings
from workers.memory import freeze_startup_objects, release_ended_sessions
from workers.session import Bot, Session

# A stopping worker gives the engine this long to receive its last messages.
FINAL_FLUSH_S = 0.3
# The event loop's lateness is sampled this often; the heartbeat reports the
# 99th percentile of the last LAG_SAMPLES samples (5 s).
LAG_SAMPLE_S = 0.05
LAG_SAMPLES = 100
# A bot file is imported under this name: no package's, nor "__main__", so a bot's
# `if __name__ == "__main__":` block (which starts Pipecat's runner) does not run here.
BOT_FILE_MODULE = "__bot__"
# The objects a session is made of, counted on SIGUSR1 to see whether ended sessions are released.
SESSION_OBJECT_TYPES = (
    "Session", "SmallWebRTCConnection", "InputTrack", "AudioOutput", "VideoOutput",
    "SmallWebRTCTransport", "PipelineWorker", "PipelineTask", "Pipeline",
)


def resident_mb() -> float:
    """This process's resident memory in MB, as the engine's memory limit reads it (0 without /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class LoadedBot(NamedTuple):
    """A bot imported into this worker, and what its module gives every session (as Pipecat's runner reads it).

    Parameters:
        run: The bot function.
        file_storage: What the module's ``create_file_storage()`` returned, None without one.
    """

    run: Bot
    file_storage: FileStorage | None = None


def _import_bot_file(path: Path) -> ModuleType:
    """Import a bot's Python file (any name, hyphens too) as the module ``BOT_FILE_MODULE``.

    Its folder is appended to ``sys.path``, so the bot imports its neighbours
    as under ``python bot.py``; appended, so that none of them hides a package
    of the host's.
    """
    spec = importlib.util.spec_from_file_location(BOT_FILE_MODULE, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"bot file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    # Dataclasses, pickle and typing look a class's module up by name.
    sys.modules[BOT_FILE_MODULE] = module
    spec.loader.exec_module(module)
    return module


def load_bot(spec: str) -> LoadedBot:
    """Import the bot ``package.module[:function]`` or ``path/to/file.py[:function]`` (the function ``bot`` by default).

    Raises:
        ValueError: If the spec is malformed or names nothing callable.
        TypeError: If the module's ``create_file_storage()`` is a coroutine function (it must be synchronous).
    """
    bot = BotSpec.parse(spec)
    module = _import_bot_file(Path(bot.location)) if bot.is_file else importlib.import_module(bot.location)
    run = getattr(module, bot.function, None)
    if not callable(run):
        raise ValueError(f"bot {spec!r}: {bot.location} has no function {bot.function}")
    create_file_storage = getattr(module, "create_file_storage", None)
    file_storage = create_file_storage() if create_file_storage else None
    if asyncio.iscoroutine(file_storage):
        file_storage.close()
        raise TypeError(f"bot {spec!r}: create_file_storage() must be synchronous")
    return LoadedBot(run, file_storage)


class Worker:
    """Hosts sessions for one engine: one socket, one outbox, one actor per session."""

    def __init__(self, settings: HostSettings, endpoint: str, worker_id: str):
        """Initialize the worker.

        Args:
            settings: Host settings (bot, capacity, timers).
            endpoint: The engine's endpoint.
            worker_id: This worker's id (its socket identity).
        """
        if endpoint.startswith("tcp://") and not (settings.curve_secret_key_file and settings.curve_server_key_file):
            raise ValueError(
                "a worker joining over tcp:// needs curve_secret_key_file (its own key) and "
                "curve_server_key_file (the engine's public key)"
            )
        self.settings = settings
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.bot = load_bot(settings.bot)
        self.outbox = Outbox("outbox to engine")
        self.sessions: dict[str, Session] = {}
        self._session_tasks: set[asyncio.Task] = set()
        self._last_heard = time.monotonic()
        self._loop_lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._cpu_share = 0.0
        self._stopping = asyncio.Event()
        self._draining = False
        self._frames_dropped_ended = 0
        self.log = logger.bind(worker_id=worker_id)

    async def run(self) -> None:
        """Serve the engine until told to stop, signalled, or the engine goes silent."""
        context = zmq.Context()
        dealer = connect_dealer(
            context, self.endpoint, self.worker_id,
            self.settings.curve_secret_key_file, self.settings.curve_server_key_file,
        )
        link = LinkSocket(dealer, self._handle)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGUSR1, self._report_live_objects)
        pump = asyncio.create_task(self.outbox.pump(link.send))
        heartbeat = asyncio.create_task(self._heartbeat())
        self.outbox.send(
            WorkerRegister(self.worker_id, os.getpid(), socket.gethostname(), self.settings.worker_capacity)
        )
        self.log.info(f"worker {self.worker_id} joining {self.endpoint} with bot {self.settings.bot}")
        try:
            await self._stopping.wait()
        finally:
            heartbeat.cancel()
            for session in self.sessions.values():
                session.close("worker stopping")
            if self._session_tasks:
                await asyncio.wait(self._session_tasks, timeout=self.settings.bot_end_grace_s + 1)
            await asyncio.sleep(FINAL_FLUSH_S)
            pump.cancel()
            link.close()
            context.term()
            self.log.info(f"worker {self.worker_id} stopped")

    def _on_signal(self) -> None:
        # The first signal drains, the second stops at once.
        if self._draining:
            self._stopping.set()
        else:
            self._drain("signalled")

    def _drain(self, why: str) -> None:
        """Take no new session, and stop once the last one ends."""
        if not self.sessions:
            self._stopping.set()
            return
        self._draining = True
        self.log.warning(f"worker {self.worker_id} draining ({why}): {len(self.sessions)} sessions left")
        self.outbox.send(self._heartbeat_message())

    def _report_live_objects(self) -> None:
        # Operators (and tests/bench/soak.py) send SIGUSR1 to see what a long-running worker still holds.
        self.log.info(f"live objects in worker {os.getpid()}: {live_objects(SESSION_OBJECT_TYPES)}")

    def _heartbeat_message(self) -> WorkerHeartbeat:
        dropped = self._frames_dropped_ended + sum(s.connection.frames_dropped for s in self.sessions.values())
        lags = sorted(self._loop_lags) or [0.0]
        lag_p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        return WorkerHeartbeat(lag_p99, self._cpu_share, dropped, self._draining, tuple(self.sessions), resident_mb())

    def _handle(self, parts: list[zmq.Frame]) -> None:
        self._last_heard = time.monotonic()
        try:
            message = decode_from_engine(parts[0].buffer)
        except msgspec.DecodeError as e:
            self.log.warning(f"dropping an unreadable message from the engine: {e}")
            return
        try:
            self._dispatch(message, parts[1:])
        except Exception:
            self.log.exception(f"error handling {type(message).__name__}")

    def _dispatch(self, message, payload: list) -> None:
        match message:
            case SessionOpen() if self._draining:
                # Placed before the engine heard this worker drains: decline, the engine ends it.
                self.outbox.send(SessionClose(message.session_id, "worker draining"))
            case SessionOpen():
                self._open(message)
            case EngineHeartbeat():
                pass
            case WorkerAccept(engine_id=engine_id):
                self.log.info(f"worker {self.worker_id} accepted by engine {engine_id}")
            case WorkerDrain(reason=reason):
                self._drain(f"asked by the engine: {reason}")
            case WorkerStop(reason=reason):
                self.log.info(f"worker {self.worker_id} asked to stop: {reason}")
                self._stopping.set()
            case SessionMessage(session_id=session_id):
                session = self.sessions.get(session_id)
                if session is not None:
                    session.deliver(message, payload)

    def _open(self, opening: SessionOpen) -> None:
        if opening.session_id in self.sessions:
            return
        session = Session(
            opening, self.outbox, self.bot.run, self.worker_id, self.settings.bot_end_grace_s, self.bot.file_storage
        )
        self.sessions[opening.session_id] = session
        task = asyncio.create_task(session.run(), name=f"session-{opening.session_id}")
        self._session_tasks.add(task)

        def ended(_):
            self._session_tasks.discard(task)
            self.sessions.pop(opening.session_id, None)
            self._frames_dropped_ended += session.connection.frames_dropped
            if self._draining and not self.sessions:
                self._stopping.set()
            # Once this callback, which still holds the session, has returned.
            asyncio.get_running_loop().call_soon(self._release_memory)

        task.add_done_callback(ended)
        session.log.info(f"session {opening.session_id} started on worker {self.worker_id}")

    def _release_memory(self) -> None:
        # Without this a worker grows by what its ended sessions' pipelines held (issue 10).
        started = time.perf_counter()
        release_ended_sessions()
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.log.debug(f"worker {self.worker_id}: ended sessions' memory released in {elapsed_ms:.1f} ms")

    async def _measure_lag(self) -> None:
        # How late the loop wakes up: what every session on this worker suffers too.
        while True:
            expected = time.monotonic() + LAG_SAMPLE_S
            await asyncio.sleep(LAG_SAMPLE_S)
            self._loop_lags.append(max(0.0, (time.monotonic() - expected) * 1000))

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval_s
        lag_task = asyncio.create_task(self._measure_lag())
        wall, cpu = time.monotonic(), time.process_time()
        try:
            while True:
                await asyncio.sleep(interval)
                # Cores this process used since the last beat, its threads included.
                now_wall, now_cpu = time.monotonic(), time.process_time()
                self._cpu_share = (now_cpu - cpu) / max(now_wall - wall, 1e-3)
                wall, cpu = now_wall, now_cpu
                self.outbox.send(self._heartbeat_message())
                silent = time.monotonic() - self._last_heard
                if silent > self.settings.engine_silent_after_s:
                    self.log.error(f"worker {self.worker_id}: engine silent for {silent:.0f} s; leaving")
                    self._stopping.set()
        finally:
            lag_task.cancel()


async def run_worker(settings: HostSettings, endpoint: str, worker_id: str | None = None) -> None:
    """Run one worker until it stops."""
    worker = Worker(settings, endpoint, worker_id or f"{socket.gethostname()}-{os.getpid()}")
    # After the bot's imports: what is alive now lives as long as the process.
    freeze_startup_objects()
    await worker.run()
