"""The command line: its commands and flags, key making, and invalid configurations that stop it (whole-host runs: tests/host)."""

import os
import subprocess
import sys

import pytest
import zmq.auth

from engine.cli import build_parser, main, make_keys
from tests.support.host import REPO, free_port


def exit_of(argv: list[str]) -> SystemExit:
    """How ``main(argv)`` exits."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value


def test_the_commands_are_listed(capsys):
    assert exit_of(["--help"]).code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("serve", "worker", "keys"))


def test_a_command_is_required():
    assert exit_of([]).code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "not-a-number"],
        ["serve", "--connection-mode", "triple"],
        ["keys", "--name", "engine"],
        # Pipecat's runner serves other transports; this host serves webrtc only.
        ["serve", "-t", "daily"],
        ["serve", "-v", "--log-level", "INFO"],
    ],
)
def test_malformed_flags_are_refused(argv):
    assert exit_of(argv).code == 2


def test_pipecats_runner_flags_are_taken_as_it_takes_them():
    turn = '{"urls": "turn:t:3478", "username": "u", "credential": "p"}'
    args = build_parser().parse_args(
        ["serve", "-t", "webrtc", "-vv", "--esp32", "--ice-servers", "stun:a:1", turn,
         "--allowed-origins", "https://a.example", "https://b.example", "--runner-body", "body.yaml"]
    )
    assert (args.transport, args.verbose, args.esp32, args.runner_body) == ("webrtc", 2, True, "body.yaml")
    assert args.ice_servers == ["stun:a:1", turn]
    assert args.allowed_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    "argv, setting",
    [
        (["serve", "--port", "99999"], "port"),
        (["serve", "--engine-endpoint", "tcp://127.0.0.1:7999"], "curve_secret_key_file"),
        (["serve", "--config", "/nonexistent/host.toml"], "/nonexistent/host.toml"),
        (["serve", "--runner-body", "/nonexistent/body.yaml"], "runner_body"),
        (["serve", "--ice-servers", '{"url": "stun:a:1"}'], "ice_servers"),
        (["serve", "--host-id", "lb-a"], "host_id"),
    ],
)
def test_an_invalid_setting_exits_naming_it(argv, setting):
    message = str(exit_of(argv).code)
    assert message.startswith("smallwebrtc-host: invalid configuration") and setting in message


def test_keys_makes_a_curve_key_pair_whose_secret_only_its_owner_reads(tmp_path, capsys):
    main(["keys", "--dir", str(tmp_path / "keys"), "--name", "engine"])
    assert "public key:" in capsys.readouterr().out
    public_file, secret_file = tmp_path / "keys" / "engine.key", tmp_path / "keys" / "engine.key_secret"
    assert os.stat(secret_file).st_mode & 0o777 == 0o600
    public, secret = zmq.auth.load_certificate(str(secret_file))
    assert secret and zmq.auth.load_certificate(str(public_file)) == (public, None)


def test_make_keys_returns_the_public_and_secret_files(tmp_path):
    public_file, secret_file = make_keys(str(tmp_path), "worker-1")
    assert (public_file, secret_file) == (str(tmp_path / "worker-1.key"), str(tmp_path / "worker-1.key_secret"))


def test_a_setting_found_invalid_at_startup_exits_naming_it(tmp_path):
    _, secret_file = make_keys(str(tmp_path), "engine")
    env = {
        **os.environ,
        "SMALLWEBRTC_HOST_CURVE_SECRET_KEY_FILE": secret_file,
        "SMALLWEBRTC_HOST_CURVE_AUTHORIZED_KEYS_DIR": str(tmp_path / "no-such-dir"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--workers", "0", "--port", str(free_port())],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "invalid configuration: curve_authorized_keys_dir" in result.stderr


def test_worker_hands_its_arguments_to_the_worker_program():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker", "--help"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert "smallwebrtc-host worker" in result.stdout and "--engine" in result.stdout
