"""The worker processes ``serve`` runs on this machine: started, restarted when they die, stopped."""

import asyncio
import itertools
import os
import sys
import time

from engine.common.settings import HostSettings
from engine.processes import POLL_S, ProcessSlot, stop_process
from engine.sessions import Engine

# A worker asked to stop gets this long before it is terminated, then killed.
WORKER_STOP_GRACE_S = 5.0


class LocalWorkers:
    """Keeps ``settings.worker_count`` local worker processes running for an engine."""

    def __init__(self, engine: Engine, settings: HostSettings, config_file: str | None):
        """Initialize the supervisor.

        Args:
            engine: The engine the workers join (and which is told of their exits).
            settings: Host settings (bot, log level, worker count).
            config_file: The configuration file the workers read too.
        """
        self._engine = engine
        self._settings = settings
        self._config_file = config_file
        self._slots = [ProcessSlot(self._worker_id(i)) for i in range(settings.worker_count)]
        # Workers the engine retired (past their memory limit): replaced, left to finish their sessions.
        self._retired: list[asyncio.subprocess.Process] = []
        self._successors = itertools.count(1)
        self._watch_task: asyncio.Task | None = None

    def _worker_id(self, index: int, successor: int = 0) -> str:
        # A successor runs beside the worker it replaces, so it joins under an id of its own.
        return f"{self._engine.engine_id}-w{index}" + (f".{successor}" if successor else "")

    def __len__(self) -> int:
        return len(self._slots)

    async def start(self) -> None:
        """Start every worker and watch them."""
        for slot in self._slots:
            await self._spawn(slot)
        self._watch_task = asyncio.create_task(self._watch(), name="local-workers")

    async def _spawn(self, slot: ProcessSlot) -> None:
        config = ["--config", self._config_file] if self._config_file else []
        access = self._engine.local_access
        slot.process = await asyncio.create_subprocess_exec(
            # -P: the directory serve runs from is not searched first, so a transport.py,
            # engine.py or workers/ there cannot stand in for the host's own (workers/__main__.py).
            sys.executable, "-P", "-m", "workers",
            "--engine", access.endpoint,
            # The engine's keys for its local workers, or none: never the curve_* settings they would
            # read from the configuration they share with the engine, which name the engine's own key.
            "--curve-secret-key", access.curve_secret_key_file,
            "--curve-server-key", access.curve_server_key_file,
            "--worker-id", slot.name,
            "--bot", self._settings.bot,
            "--log-level", self._settings.log_level,
            # Its sessions' peers die with the engine: so does it, at once, rather than
            # waiting to find the engine silent.
            "--parent-pid", str(os.getpid()),
            *config,
            # Its own session: a terminal's Ctrl-C reaches the engine, which stops workers in order.
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        self._engine.watch_local_worker(slot.name, slot.process)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for index, slot in enumerate(self._slots):
                if self._retiring(slot):
                    self._retired.append(slot.process)
                    self._slots[index] = ProcessSlot(self._worker_id(index, next(self._successors)))
                    await self._spawn(self._slots[index])
                elif slot.exited() and await slot.wait_to_restart("worker"):
                    await self._spawn(slot)
            self._retired = [process for process in self._retired if process.returncode is None]

    def _retiring(self, slot: ProcessSlot) -> bool:
        """Whether the engine retires the slot's running worker (it drains, and exits on its own)."""
        handle = self._engine.registry.get(slot.name) if self._engine.registry else None
        return (
            handle is not None and handle.retiring is not None
            and slot.process is not None and slot.process.pid == handle.pid and slot.process.returncode is None
        )

    async def stop(self) -> None:
        """Stop watching, then wait for every worker to leave (terminate, then kill, the late ones)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        processes = [slot.process for slot in self._slots if slot.process] + self._retired
        await asyncio.gather(*(stop_process(process, WORKER_STOP_GRACE_S) for process in processes))
