"""The deployment files (Dockerfile, compose.yaml, .dockerignore) agree with the host: files, settings, ports.

No container runtime runs here, so these read the files as Docker does and
check them against the code; tests/host/test_packaging.py installs and runs
the host from exactly what the Dockerfile copies.
"""

import os
import re
import tomllib

import pytest
import yaml

from engine.cli import build_parser
from engine.common.settings import HostSettings, load_settings, parse_port_range
from tests.support.deployment import (
    COMPOSE_FILE,
    copied_sources,
    dockerignored,
    environment,
    exec_form,
    instruction_arguments,
)
from tests.support.host import REPO

SETTING_PREFIX = "SMALLWEBRTC_HOST_"


@pytest.fixture
def image_settings(monkeypatch) -> HostSettings:
    """The settings the image's ENV gives the host (with the default configuration file)."""
    for name in list(os.environ):
        if name.startswith((SETTING_PREFIX, "PIPECAT_")):
            monkeypatch.delenv(name)
    for name, value in environment().items():
        monkeypatch.setenv(name, value)
    return load_settings()


def compose_service() -> dict:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert len(services) == 1, "compose.yaml runs the one host"
    return next(iter(services.values()))


def exposed() -> dict[str, list[str]]:
    """The Dockerfile's EXPOSE ports by protocol."""
    ports: dict[str, list[str]] = {}
    for arguments in instruction_arguments("EXPOSE"):
        for port in arguments.split():
            number, _, protocol = port.partition("/")
            ports.setdefault(protocol or "tcp", []).append(number)
    return ports


def test_the_image_is_python_311_slim():
    assert instruction_arguments("FROM") == ["python:3.11-slim"]


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "engine", "workers", "transport", "config"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source), f".dockerignore leaves out {source}, which the Dockerfile copies"
    # The package's defaults file links into config/, which the image must have too.
    assert (REPO / "engine/common/host.toml").resolve().is_relative_to(REPO / "config")


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python", ".git/HEAD", "engine/__pycache__/cli.cpython-311.pyc", "test-artifacts/browser/page.png",
        ".pytest_cache/v/cache/nodeids", "tests/bench/results/run.json", "build/lib/engine/cli.py",
        "smallwebrtc_host.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_leaves_out_environments_and_test_artefacts(path):
    assert dockerignored(path)


def test_the_image_environment_names_settings_and_they_are_valid(image_settings):
    names = [name.removeprefix(SETTING_PREFIX).lower() for name in environment() if name.startswith(SETTING_PREFIX)]
    assert names and all(name in HostSettings.model_fields for name in names), names
    assert image_settings.ice_udp_port_range


def test_the_image_exposes_the_http_port_and_the_ice_port_range(image_settings):
    ports = exposed()
    assert ports["tcp"] == [str(image_settings.port)]
    (udp_range,) = ports["udp"]
    assert parse_port_range(udp_range) == parse_port_range(image_settings.ice_udp_port_range)


def test_the_image_serves_on_every_address_with_the_console_script():
    (command,) = [exec_form(arguments) for arguments in instruction_arguments("CMD")]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.host) == ("serve", "0.0.0.0")


def test_the_healthcheck_asks_healthz_on_the_configured_port(image_settings):
    (healthcheck,) = instruction_arguments("HEALTHCHECK")
    assert " CMD " in f" {healthcheck} " and "/healthz" in healthcheck
    assert "SMALLWEBRTC_HOST_PORT" in healthcheck and "SMALLWEBRTC_HOST_PORT" in environment()


def test_compose_builds_the_dockerfile_and_publishes_its_ports(image_settings):
    service = compose_service()
    build = service["build"]
    assert (REPO / build["context"] / build["dockerfile"]).resolve() == (REPO / "Dockerfile")
    published = {}
    for mapping in service["ports"]:
        ports, _, protocol = mapping.partition("/")
        host_ports, container_ports = ports.rsplit(":", 1)[-2:]
        # ICE candidates name the container's ports: a published port must be the same number.
        assert host_ports == container_ports, mapping
        published[protocol or "tcp"] = container_ports
    assert published["tcp"] == str(image_settings.port)
    assert parse_port_range(published["udp"]) == parse_port_range(image_settings.ice_udp_port_range)


def test_compose_sets_settings_only_and_drains_within_its_grace_period():
    service = compose_service()
    variables = service["environment"]
    names = [name.removeprefix(SETTING_PREFIX).lower() for name in variables]
    assert all(name in HostSettings.model_fields for name in names), names
    # The operator's routes show every session's pc_id: compose refuses to start without a token.
    assert ":?" in variables["SMALLWEBRTC_HOST_ADMIN_TOKEN"]
    grace_s = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"])[1])
    assert float(variables["SMALLWEBRTC_HOST_DRAIN_TIMEOUT_S"]) < grace_s
