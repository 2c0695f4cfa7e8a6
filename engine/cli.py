"""``smallwebrtc-host``: run the engine with its local workers (``serve``), one more worker (``worker``), or make keys."""

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import httpx
import uvicorn
import uvloop
import zmq.auth
from loguru import logger

from engine.common.settings import (
    HostSettings,
    configure_logging,
    load_runner_body,
    parse_port_range,
    settings_or_exit,
)
from engine.engine_pool import EnginePool
from engine.front import FORWARD_TIMEOUT_S, create_front_app
from engine.ice import PortRangeLoop
from engine.local_workers import WORKER_STOP_GRACE_S, LocalWorkers
from engine.sessions import Engine
from engine.signaling import create_app


class _Server(uvicorn.Server):
    # The engine owns SIGINT/SIGTERM so it can stop its workers in order;
    # uvicorn would otherwise take them and re-raise them after serving.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


# Log levels for -v and -vv: each one more verbose than the default INFO.
VERBOSE_LOG_LEVELS = ("DEBUG", "TRACE")


def _warn_if_open(settings: HostSettings) -> None:
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        return
    if not settings.api_token:
        logger.warning(
            f"listening on {settings.host} WITHOUT api_token: anyone who reaches this address can start "
            "bot sessions. Set api_token (or SMALLWEBRTC_HOST_API_TOKEN) outside local development."
        )
    if not settings.admin_token:
        logger.warning(
            f"listening on {settings.host} WITHOUT admin_token: anyone who reaches this address can read "
            "every session's pc_id at /workers and take it over. Set admin_token (or SMALLWEBRTC_HOST_ADMIN_TOKEN)."
        )


async def serve(settings: HostSettings, config_file: str | None = None, runner_body: Any = None) -> None:
    """Run the engine, its HTTP API and ``settings.worker_count`` local workers until signalled.

    Args:
        settings: Host settings.
        config_file: The configuration file the workers read too.
        runner_body: The body a bot gets when its client sends none (``--runner-body``).
    """
    engine = Engine(settings)
    await engine.start()
    workers = LocalWorkers(engine, settings, config_file)
    server = _Server(
        uvicorn.Config(
            create_app(engine, runner_body), host=settings.host, port=settings.port,
            log_level=settings.log_level.lower(), loop="none", lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()

    def stop_now():
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    def on_signal():
        # The first signal drains, the second stops at once.
        if engine.draining:
            stop_now()
        else:
            engine.drain("signal; send it again to stop at once")

    engine.on_drained = stop_now
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await workers.start()
        _warn_if_open(settings)
        print(f"smallwebrtc-host: http://{settings.host}:{settings.port}/ ({len(workers)} workers)", flush=True)
        await server.serve()
    finally:
        await engine.stop()
        await workers.stop()
        logger.info("smallwebrtc-host stopped")


async def serve_engines(settings: HostSettings, config_file: str | None = None) -> None:
    """Run ``settings.engines`` engines, each with its share of the local workers, behind one HTTP address."""
    client = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S)
    pool = EnginePool(settings, config_file, client)
    server = _Server(
        uvicorn.Config(
            create_front_app(pool, client, settings), host=settings.host, port=settings.port,
            log_level=settings.log_level.lower(), loop="none", lifespan="off",
        )
    )
    signals = 0

    def on_signal():
        # Each engine drains on the first signal and stops at once on the second, as one engine does.
        nonlocal signals
        signals += 1
        pool.signal_all(signal.SIGTERM)
        if signals > 1:
            server.should_exit = True

    def all_ended():
        server.should_exit = True

    pool.on_all_ended = all_ended
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await pool.start()
        except RuntimeError as e:
            sys.exit(f"smallwebrtc-host: {e}")
        _warn_if_open(settings)
        print(
            f"smallwebrtc-host: http://{settings.host}:{settings.port}/ ({settings.engines} engines, "
            f"{settings.worker_count} workers)",
            flush=True,
        )
        await server.serve()
    finally:
        await pool.stop(grace_s=WORKER_STOP_GRACE_S + 5)
        await client.aclose()
        logger.info("smallwebrtc-host stopped")


def make_keys(directory: str, name: str) -> tuple[str, str]:
    """Write a CurveZMQ key pair; returns the public and secret key files."""
    os.makedirs(directory, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_file, 0o600)
    return public_file, secret_file


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``smallwebrtc-host``."""
    parser = argparse.ArgumentParser(prog="smallwebrtc-host", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the engine, its HTTP API and local workers")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument("--host-id", help="what starts every id this host mints, for a load balancer to route by")
    serve_cmd.add_argument("--workers", type=int, help="local workers (-1: one per core, 0: none)")
    serve_cmd.add_argument("--engines", type=int, help="engine processes sharing the peers and the workers")
    serve_cmd.add_argument("--bot", help="the bot: path/to/bot.py or package.module, with :function if not bot")
    serve_cmd.add_argument("--config", help="a TOML configuration file (default: config/host.toml)")
    serve_cmd.add_argument("--ice-host-addresses", help="comma-separated addresses to gather host candidates on")
    serve_cmd.add_argument(
        "--ice-servers", nargs="*", metavar="SERVER",
        help="STUN/TURN servers, as Pipecat's runner takes them: URLs (also comma-separated) or JSON objects "
        "with urls, username and credential (default: PIPECAT_ICE_SERVERS)",
    )
    serve_cmd.add_argument("--ice-announced-address", help="public address of a 1:1 NAT, announced in candidates")
    serve_cmd.add_argument("--ice-udp-port-range", help="UDP ports for ICE, e.g. 40000-40999")
    serve_cmd.add_argument("--engine-endpoint", help="where workers reach the engine (default: private ipc socket)")
    serve_cmd.add_argument("--connection-mode", choices=["single", "multiple"], help="one peer at a time, or many")
    serve_cmd.add_argument("--esp32", action="store_true", default=None, help="munge answers for ESP32 clients")
    serve_cmd.add_argument(
        "--allowed-origins", nargs="*", metavar="ORIGIN",
        help="origins whose browser clients may call the session routes (none: any; default: PIPECAT_ALLOWED_ORIGINS)",
    )
    serve_cmd.add_argument(
        "--runner-body", metavar="FILE", help="a YAML or JSON file: the body a bot gets when its client sends none"
    )
    serve_cmd.add_argument(
        "-t", "--transport", choices=["webrtc"], help="as Pipecat's runner takes it; this host serves webrtc only"
    )
    verbosity = serve_cmd.add_mutually_exclusive_group()
    verbosity.add_argument("--log-level")
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="log level DEBUG (-vv: TRACE)")

    # Listed for --help; main() hands "worker" and its arguments to the worker program before parsing.
    commands.add_parser("worker", help="run one worker that joins a running engine (see 'worker --help')")

    keys_cmd = commands.add_parser("keys", help="make a CurveZMQ key pair for the engine or a worker")
    keys_cmd.add_argument("--dir", required=True, help="where to write NAME.key (public) and NAME.key_secret")
    keys_cmd.add_argument("--name", required=True, help="e.g. engine, or the worker's name")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        # A worker is a program of its own: the engine's code never imports it. -P: see LocalWorkers.
        os.execv(sys.executable, [sys.executable, "-P", "-m", "workers", *argv[1:]])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        log_level = VERBOSE_LOG_LEVELS[min(args.verbose, len(VERBOSE_LOG_LEVELS)) - 1] if args.verbose else args.log_level
        settings = settings_or_exit(
            "smallwebrtc-host", args.config,
            host=args.host, port=args.port, host_id=args.host_id, workers=args.workers, engines=args.engines, bot=args.bot,
            ice_host_addresses=args.ice_host_addresses, ice_servers=args.ice_servers,
            engine_endpoint=args.engine_endpoint, log_level=log_level,
            connection_mode=args.connection_mode, esp32=args.esp32,
            ice_announced_address=args.ice_announced_address, ice_udp_port_range=args.ice_udp_port_range,
            allowed_origins=args.allowed_origins, runner_body=args.runner_body,
        )
        try:
            runner_body = load_runner_body(settings.runner_body)
            configure_logging(settings)
            PortRangeLoop.port_range = parse_port_range(settings.ice_udp_port_range)
            # Pipecat's runner sets ENV=local, and bots made by `pipecat init` leave out what only
            # a deployment has (Krisp) when it is; a deployment sets ENV itself (the Dockerfile does).
            os.environ.setdefault("ENV", "local")
            if settings.engines == 1:
                uvloop.run(serve(settings, args.config, runner_body), loop_factory=PortRangeLoop)
            else:
                uvloop.run(serve_engines(settings, args.config), loop_factory=PortRangeLoop)
            # Everything has stopped: a late second stop signal must not turn a clean exit into a kill.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except ValueError as e:
            sys.exit(f"smallwebrtc-host: invalid configuration: {e}")
    elif args.command == "keys":
        public_file, secret_file = make_keys(args.dir, args.name)
        print(f"public key: {public_file}\nsecret key: {secret_file} (keep it on this machine only)")


if __name__ == "__main__":
    main()
