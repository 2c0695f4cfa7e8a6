"""The worker processes ``serve`` runs on this machine: started, restarted when they die, stopped."""

import asyncio
import sys
import time
from dataclasses import dataclass, field

from loguru import logger

from engine.common.settings import HostSettings
from engine.engine import Engine

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
class ProcessSlot:
    """One supervised process's place (a local worker, an engine shard): its name survives restarts, its process does not."""

    name: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: list[float] = field(default_factory=list)
    delay: float = RESTART_DELAY_FIRST_S
    given_up: bool = False

    def exited(self) -> bool:
        """Whether its process has ended (and the slot is not given up)."""
        return not self.given_up and self.process is not None and self.process.returncode is not None

    async def wait_to_restart(self, what: str) -> bool:
        """After its process ended: wait the restart delay (True), or give the slot up if it crash-loops (False)."""
        now = time.monotonic()
        code = self.process.returncode
        if now - self.started_at > STABLE_AFTER_S:
            self.delay = RESTART_DELAY_FIRST_S
        self.restarts = [t for t in self.restarts if now - t < CRASH_LOOP_WINDOW_S] + [now]
        if len(self.restarts) > CRASH_LOOP_RESTARTS:
            self.given_up = True
            logger.error(
                f"{what} {self.name} exited with code {code} {len(self.restarts)} times within "
                f"{CRASH_LOOP_WINDOW_S:g} s: it is crash-looping and will not be restarted"
            )
            return False
        logger.warning(f"{what} {self.name} exited with code {code}; restarting it in {self.delay:g} s")
        self.process = None
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, RESTART_DELAY_MAX_S)
        return True


async def stop_process(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """Wait ``grace_s`` for a process asked to stop, then terminate it, then kill it."""
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        logger.warning(f"pid {process.pid} did not stop in time; terminating it")
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 2.0)
        except TimeoutError:
            process.kill()
            await process.wait()


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
        self._slots = [ProcessSlot(f"{engine.engine_id}-w{i}") for i in range(settings.worker_count)]
        self._watch_task: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._slots)

    async def start(self) -> None:
        """Start every worker and watch them."""
        for slot in self._slots:
            await self._spawn(slot)
        self._watch_task = asyncio.create_task(self._watch(), name="local-workers")

    async def _spawn(self, slot: ProcessSlot) -> None:
        config = ["--config", self._config_file] if self._config_file else []
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers",
            "--engine", self._engine.endpoint,
            "--worker-id", slot.name,
            "--bot", self._settings.bot,
            "--log-level", self._settings.log_level,
            *config,
            # Its own session: a terminal's Ctrl-C reaches the engine, which stops workers in order.
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        self._engine.watch_local_worker(slot.name, slot.process)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for slot in self._slots:
                if slot.exited() and await slot.wait_to_restart("worker"):
                    await self._spawn(slot)

    async def stop(self) -> None:
        """Stop watching, then wait for every worker to leave (terminate, then kill, the late ones)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        await asyncio.gather(*(stop_process(slot.process, WORKER_STOP_GRACE_S) for slot in self._slots if slot.process))
