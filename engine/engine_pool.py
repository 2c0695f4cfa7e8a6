"""The engine processes of a host with ``engines`` > 1: spawned, restarted when they crash, stopped, and found by the ids they mint.

One engine's event loop fills a core at a handful of A/V sessions while the
workers scale with the cores (README, Performance). With ``engines`` > 1,
``serve`` runs that many engines, each a full ``serve`` with its share of the
local workers on a private loopback port; ``engine.front`` answers on the
public address and hands every request to the engine that owns it.
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from loguru import logger

from engine.common.settings import HostSettings
from engine.processes import POLL_S, ProcessSlot, stop_process

# How long an engine may take to start and have its workers join.
ENGINE_START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_endpoint(endpoint: str, index: int) -> str:
    """Engine ``index``'s worker endpoint: private by default; else the given tcp port + index, or ipc path + index."""
    if not endpoint:
        return ""
    if endpoint.startswith("tcp://"):
        address, _, port = endpoint.rpartition(":")
        return f"{address}:{int(port) + index}"
    return f"{endpoint}.{index}"


def settings_environment(settings: HostSettings) -> dict[str, str]:
    """The settings as ``SMALLWEBRTC_HOST_*`` variables, so a child process resolves exactly these."""
    return {
        f"SMALLWEBRTC_HOST_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.model_dump(mode="json").items()
    }


@dataclass
class Shard:
    """One engine process: its loopback port and share of the workers survive restarts, its id does not."""

    slot: ProcessSlot
    port: int
    workers: int
    endpoint: str
    engine_id: str = ""

    @property
    def url(self) -> str:
        """Where its HTTP API listens."""
        return f"http://127.0.0.1:{self.port}"


class EnginePool:
    """Runs ``settings.engines`` engine processes, restarts one that crashes, and knows which owns a peer."""

    def __init__(self, settings: HostSettings, config_file: str | None, client: httpx.AsyncClient):
        """Initialize the pool (no engine runs until ``start``).

        Args:
            settings: Host settings; the local workers are shared out among the engines.
            config_file: The configuration file the engines read too.
            client: The HTTP client that asks an engine whether it is ready.
        """
        count, workers = settings.engines, settings.worker_count
        self.shards = [
            Shard(
                ProcessSlot(f"engine-{i}"), _free_port(), workers // count + (i < workers % count),
                shard_endpoint(settings.engine_endpoint, i),
            )
            for i in range(count)
        ]
        self._config_file = config_file
        self._client = client
        self._env = {**os.environ, **settings_environment(settings)}
        # What the engines show only to the operator: which of them runs, and its workers.
        self._admin_headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
        self._turn = 0
        self._watch_task: asyncio.Task | None = None
        self.on_all_ended: Callable[[], None] = lambda: None

    async def start(self) -> None:
        """Start every engine and wait until each serves and its workers have joined.

        Raises:
            RuntimeError: If an engine exits or is not ready within ``ENGINE_START_TIMEOUT_S``.
        """
        await asyncio.gather(*(self._spawn(shard) for shard in self.shards))
        self._watch_task = asyncio.create_task(self._watch(), name="engine-shards")

    async def _spawn(self, shard: Shard) -> None:
        config = ["--config", self._config_file] if self._config_file else []
        endpoint = ["--engine-endpoint", shard.endpoint] if shard.endpoint else []
        shard.engine_id = ""
        shard.slot.process = process = await asyncio.create_subprocess_exec(
            # -P: as for the workers (engine.local_workers), the host's own modules come first.
            sys.executable, "-P", "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(shard.port),
            "--workers", str(shard.workers), "--engines", "1", *endpoint, *config,
            env=self._env,
            # Its own session: a terminal's Ctrl-C reaches this process, which stops the engines in order.
            start_new_session=True,
        )
        shard.slot.started_at = time.monotonic()
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while time.monotonic() < deadline and process.returncode is None:
            try:
                status = (await self._client.get(f"{shard.url}/workers", headers=self._admin_headers)).json()
                if len(status["workers"]) >= shard.workers:
                    shard.engine_id = status["engine_id"]
                    logger.info(f"{shard.slot.name} is engine {shard.engine_id} on port {shard.port}")
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
        if process.returncode is None:
            process.kill()  # so the watch sees it ended and applies the restart policy
            await process.wait()
            raise RuntimeError(f"{shard.slot.name} was not ready within {ENGINE_START_TIMEOUT_S:g} s")
        raise RuntimeError(f"{shard.slot.name} did not start (exit code {process.returncode})")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for shard in self.shards:
                if not shard.slot.exited():
                    continue
                shard.engine_id = ""
                if shard.slot.process.returncode == 0:
                    shard.slot.given_up = True  # it drained and stopped: it is done
                elif await shard.slot.wait_to_restart("engine"):
                    try:
                        await self._spawn(shard)
                    except RuntimeError as e:
                        logger.error(str(e))
            if all(shard.slot.given_up for shard in self.shards):
                self.on_all_ended()
                return

    def live(self) -> list[Shard]:
        """The engines serving now."""
        return [shard for shard in self.shards if shard.engine_id]

    def owner(self, minted_id: str | None) -> Shard | None:
        """The engine that minted a pc_id or a /start session id (its id starts them)."""
        if not minted_id:
            return None
        return next((shard for shard in self.live() if minted_id.startswith(shard.engine_id + "-")), None)

    def in_turn(self) -> list[Shard]:
        """The live engines, the next in turn first: new sessions go round."""
        live = self.live()
        self._turn += 1
        first = self._turn % len(live) if live else 0
        return live[first:] + live[:first]

    def signal_all(self, signum: int) -> None:
        """Send every running engine a signal (SIGTERM: drain; a second one: stop now)."""
        for shard in self.shards:
            if shard.slot.process is not None and shard.slot.process.returncode is None:
                shard.slot.process.send_signal(signum)

    async def stop(self, grace_s: float) -> None:
        """Stop watching; stop every engine (terminated after ``grace_s``)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        self.signal_all(signal.SIGTERM)
        self.signal_all(signal.SIGTERM)
        await asyncio.gather(*(stop_process(s.slot.process, grace_s) for s in self.shards if s.slot.process))
