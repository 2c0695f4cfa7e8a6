"""``smallwebrtc-host``: run the engine with its local workers, or one more worker."""

import argparse
import asyncio
import contextlib
import signal
import sys

import uvicorn
import uvloop
from loguru import logger
from pydantic import ValidationError

from engine.engine import Engine
from engine.settings import HostSettings, load_settings
from engine.signaling import create_app

# A worker asked to stop gets this long before it is terminated, then killed.
WORKER_STOP_GRACE_S = 5.0


def configure_logging(level: str) -> None:
    """One stderr sink at ``level`` for this process."""
    logger.remove()
    logger.add(sys.stderr, level=level.upper())


class _Server(uvicorn.Server):
    # The engine owns SIGINT/SIGTERM so it can stop its workers in order;
    # uvicorn would otherwise take them and re-raise them after serving.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _spawn_worker(engine: Engine, settings: HostSettings, config_file: str | None, index: int):
    worker_id = f"{engine.engine_id}-w{index}"
    config = ["--config", config_file] if config_file else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "worker",
        "--engine", engine.endpoint,
        "--worker-id", worker_id,
        "--bot", settings.bot,
        "--log-level", settings.log_level,
        *config,
        # Its own session: a terminal's Ctrl-C reaches the engine, which stops workers in order.
        start_new_session=True,
    )
    engine.watch_local_worker(worker_id, process)
    return process


async def _stop_processes(processes) -> None:
    async def stop(process):
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

    await asyncio.gather(*(stop(p) for p in processes))


async def serve(settings: HostSettings, config_file: str | None = None) -> None:
    """Run the engine, its HTTP API and ``settings.worker_count`` local workers until signalled."""
    engine = Engine(settings)
    await engine.start()
    processes = []
    server = _Server(
        uvicorn.Config(
            create_app(engine), host=settings.host, port=settings.port,
            log_level=settings.log_level.lower(), loop="none", lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()

    def request_exit():
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_exit)
    try:
        for index in range(settings.worker_count):
            processes.append(await _spawn_worker(engine, settings, config_file, index))
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(f"listening on {settings.host}: the HTTP API is reachable from the network")
        print(f"smallwebrtc-host: http://{settings.host}:{settings.port}/ ({len(processes)} workers)", flush=True)
        await server.serve()
    finally:
        await engine.stop()
        await _stop_processes(processes)
        logger.info("smallwebrtc-host stopped")


def _settings_from(args: argparse.Namespace, **flags) -> HostSettings:
    try:
        return load_settings(args.config, **flags)
    except (ValidationError, FileNotFoundError, ValueError) as e:
        sys.exit(f"smallwebrtc-host: invalid configuration: {e}")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="smallwebrtc-host", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the engine, its HTTP API and local workers")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument("--workers", type=int, help="local workers (0: one per core)")
    serve_cmd.add_argument("--bot", help="the bot, as package.module:function")
    serve_cmd.add_argument("--config", help="a TOML configuration file (default: config/host.toml)")
    serve_cmd.add_argument("--ice-host-addresses", help="comma-separated addresses to gather host candidates on")
    serve_cmd.add_argument("--ice-servers", help="comma-separated STUN/TURN URLs")
    serve_cmd.add_argument("--engine-endpoint", help="where workers reach the engine (default: private ipc socket)")
    serve_cmd.add_argument("--connection-mode", choices=["single", "multiple"], help="one peer at a time, or many")
    serve_cmd.add_argument("--esp32", action="store_true", default=None, help="munge answers for ESP32 clients")
    serve_cmd.add_argument("--log-level")

    worker_cmd = commands.add_parser("worker", help="run one worker that joins a running engine")
    worker_cmd.add_argument("--engine", required=True, help="the engine's endpoint (ipc://... or tcp://...)")
    worker_cmd.add_argument("--bot", help="the bot, as package.module:function")
    worker_cmd.add_argument("--worker-id", help="default: hostname-pid")
    worker_cmd.add_argument("--config", help="a TOML configuration file (default: config/host.toml)")
    worker_cmd.add_argument("--log-level")

    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = _settings_from(
            args, host=args.host, port=args.port, workers=args.workers, bot=args.bot,
            ice_host_addresses=args.ice_host_addresses, ice_servers=args.ice_servers,
            engine_endpoint=args.engine_endpoint, log_level=args.log_level,
            connection_mode=args.connection_mode, esp32=args.esp32,
        )
        configure_logging(settings.log_level)
        try:
            uvloop.run(serve(settings, args.config))
        except ValueError as e:
            sys.exit(f"smallwebrtc-host: invalid configuration: {e}")
    else:
        from workers.worker import run_worker

        settings = _settings_from(args, bot=args.bot, log_level=args.log_level)
        configure_logging(settings.log_level)
        uvloop.run(run_worker(settings, args.engine, args.worker_id))


if __name__ == "__main__":
    main()
