"""The worker processes ``serve`` runs on this machine: started, restarted when they die, stopped."""

import asyncio
import sys
import time
from dataclasses import dataclass, field

from loguru import logger

from engine.engine import Engine
from engine.settings import HostSettings

# A worker asked to stop gets this long before it is terminated, then killed.
WORKER_STOP_GRACE_S = 5.0
# Restart delays double from the first to the last; a worker that ran this
# long before dying starts the series over.
RESTART_DELAY_FIRST_S = 2.0
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0
# More restarts than this within CRASH_LOOP_WINDOW_S: the slot is given up.
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 60.0
POLL_S = 0.2


@dataclass
class _Slot:
    """One local worker's place: its id survives restarts, its process does not."""

    worker_id: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: list[float] = field(default_factory=list)
    delay: float = RESTART_DELAY_FIRST_S
    given_up: bool = False


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
        self._slots = [_Slot(f"{engine.engine_id}-w{i}") for i in range(settings.worker_count)]
        self._watch_task: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._slots)

    async def start(self) -> None:
        """Start every worker and watch them."""
        for slot in self._slots:
            await self._spawn(slot)
        self._watch_task = asyncio.create_task(self._watch(), name="local-workers")

    async def _spawn(self, slot: _Slot) -> None:
        config = ["--config", self._config_file] if self._config_file else []
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "worker",
            "--engine", self._engine.endpoint,
            "--worker-id", slot.worker_id,
            "--bot", self._settings.bot,
            "--log-level", self._settings.log_level,
            *config,
            # Its own session: a terminal's Ctrl-C reaches the engine, which stops workers in order.
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        self._engine.watch_local_worker(slot.worker_id, slot.process)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for slot in self._slots:
                if slot.given_up or slot.process is None or slot.process.returncode is None:
                    continue
                await self._restart(slot)

    async def _restart(self, slot: _Slot) -> None:
        now = time.monotonic()
        code = slot.process.returncode
        if now - slot.started_at > STABLE_AFTER_S:
            slot.delay = RESTART_DELAY_FIRST_S
        slot.restarts = [t for t in slot.restarts if now - t < CRASH_LOOP_WINDOW_S] + [now]
        if len(slot.restarts) > CRASH_LOOP_RESTARTS:
            slot.given_up = True
            logger.error(
                f"worker {slot.worker_id} exited with code {code} {len(slot.restarts)} times within "
                f"{CRASH_LOOP_WINDOW_S:g} s: it is crash-looping and will not be restarted"
            )
            return
        logger.warning(f"worker {slot.worker_id} exited with code {code}; restarting it in {slot.delay:g} s")
        slot.process = None
        await asyncio.sleep(slot.delay)
        slot.delay = min(slot.delay * 2, RESTART_DELAY_MAX_S)
        await self._spawn(slot)

    async def stop(self) -> None:
        """Stop watching, then wait for every worker to leave (terminate, then kill, the late ones)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        await asyncio.gather(*(self._stop(slot.process) for slot in self._slots if slot.process))

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), WORKER_STOP_GRACE_S)
        except TimeoutError:
            logger.warning(f"worker pid {process.pid} did not stop in time; terminating it")
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 2.0)
            except TimeoutError:
                process.kill()
                await process.wait()
