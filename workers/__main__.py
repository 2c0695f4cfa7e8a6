"""``python -m workers`` (``smallwebrtc-host worker``): run one worker that joins a running engine."""

import argparse
import ctypes
import os
import signal
import sys

import uvloop

from engine.common.settings import configure_logging, settings_or_exit
from transport import pipecat_modules
from workers.memory import limit_ffmpeg_threads, limit_malloc_arenas
from workers.worker import run_worker

PROGRAM = "smallwebrtc-host worker"
# prctl(2): the signal the kernel sends this process when its parent ends.
PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent ends (Linux); exit now if it already has."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:
        return  # not Linux: the worker leaves when it finds the engine silent
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have ended before the line above: then nothing will signal us.
    if os.getppid() != parent_pid:
        sys.exit(f"{PROGRAM}: the engine that started this worker (pid {parent_pid}) is gone")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the worker until it stops."""
    if sys.flags.safe_path:
        # Started with -P, so the host's own modules were found before a user's namesakes in the
        # working directory; now that they are imported, bots import from there as under `python -m`.
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("--engine", required=True, help="the engine's endpoint (ipc://... or tcp://...)")
    parser.add_argument("--bot", help="the bot: path/to/bot.py or package.module, with :function if not bot")
    parser.add_argument("--worker-id", help="default: hostname-pid")
    parser.add_argument("--config", help="a TOML configuration file (default: config/host.toml)")
    parser.add_argument("--curve-secret-key", help="this worker's secret key file (NAME.key_secret)")
    parser.add_argument("--curve-server-key", help="the engine's public key file (NAME.key)")
    parser.add_argument("--log-level")
    parser.add_argument("--parent-pid", type=int, help="exit at once when this process (the engine that started it) ends")
    args = parser.parse_args(argv)
    if args.parent_pid:
        exit_with_parent(args.parent_pid)
    settings = settings_or_exit(
        PROGRAM, args.config, bot=args.bot, log_level=args.log_level,
        curve_secret_key_file=args.curve_secret_key, curve_server_key_file=args.curve_server_key,
    )
    configure_logging(settings)
    limit_malloc_arenas()
    limit_ffmpeg_threads()
    # Before the bot is imported: a bot that asks Pipecat for its SmallWebRTC transport gets this host's.
    pipecat_modules.install()
    try:
        uvloop.run(run_worker(settings, args.engine, args.worker_id))
    except ValueError as e:
        sys.exit(f"{PROGRAM}: {e}")


if __name__ == "__main__":
    main()
