"""Supervision shared by every child process ``serve`` runs (local workers, engine shards): restart policy and stopping."""

import asyncio
import time
from dataclasses import dataclass, field

from loguru import logger

# Restart delays double from the first to the last; a process that ran this
# long before dying starts the series over.
RESTART_DELAY_FIRST_S = 2.0
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0
# More restarts than this within CRASH_LOOP_WINDOW_S: the slot is given up.
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 60.0
# How often a supervisor looks for processes that ended.
POLL_S = 0.2


@dataclass
class ProcessSlot:
    """One supervised process's place (a local worker, an engine shard): its name survives restarts, its process does not."""

    name: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: list[float] = field(default_factory=list)
    # Read when the slot is made, not when this module is: the policy is read at run time throughout.
    delay: float = field(default_factory=lambda: RESTART_DELAY_FIRST_S)
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
