"""``python -m workers`` (``smallwebrtc-host worker``): run one worker that joins a running engine."""

import argparse
import sys

import uvloop

from engine.common.settings import configure_logging, settings_or_exit
from workers.worker import run_worker

PROGRAM = "smallwebrtc-host worker"


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the worker until it stops."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("--engine", required=True, help="the engine's endpoint (ipc://... or tcp://...)")
    parser.add_argument("--bot", help="the bot, as package.module:function")
    parser.add_argument("--worker-id", help="default: hostname-pid")
    parser.add_argument("--config", help="a TOML configuration file (default: config/host.toml)")
    parser.add_argument("--curve-secret-key", help="this worker's secret key file (NAME.key_secret)")
    parser.add_argument("--curve-server-key", help="the engine's public key file (NAME.key)")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    settings = settings_or_exit(
        PROGRAM, args.config, bot=args.bot, log_level=args.log_level,
        curve_secret_key_file=args.curve_secret_key, curve_server_key_file=args.curve_server_key,
    )
    configure_logging(settings)
    try:
        uvloop.run(run_worker(settings, args.engine, args.worker_id))
    except ValueError as e:
        sys.exit(f"{PROGRAM}: {e}")


if __name__ == "__main__":
    main()
