"""The host as a user runs it: from their own directory, and installed from a package rather than from this checkout."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.client import TestPeer
from tests.support.deployment import copied_sources
from tests.support.host import REPO, SMALL_VIDEO, HostProcess, request

CONSOLE_SCRIPT = Path(sys.executable).with_name("smallwebrtc-host")
# What a user's own modules of these names do if they are ever imported in place of the host's.
SHADOW = 'raise SystemExit("the user\'s {name} was imported instead of the host\'s")\n'


async def echoes(host: HostProcess) -> None:
    """A peer gets its media back from the host's bot."""
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        await peer.wait_for_video_frames(3)
        await peer.wait_for_audio(0.5)


async def test_a_users_transport_engine_and_workers_do_not_replace_the_hosts(tmp_path):
    (tmp_path / "transport.py").write_text(SHADOW.format(name="transport.py"))
    (tmp_path / "engine.py").write_text(SHADOW.format(name="engine.py"))
    (tmp_path / "workers").mkdir()
    for module in ("__init__.py", "__main__.py"):
        (tmp_path / "workers" / module).write_text(SHADOW.format(name=f"workers/{module}"))
    # The user's bot, beside them, imports the host's transport and is found as under `python -m`.
    (tmp_path / "mybot.py").write_text(
        "from transport import SmallWebRTCTransport  # the host's, whatever lies beside this file\n"
        "from workers.demo_bot import bot as demo_bot\n\n\n"
        "async def bot(runner_args):\n"
        "    assert SmallWebRTCTransport.__module__.startswith('transport.')\n"
        "    await demo_bot(runner_args)\n"
    )
    # Two engines: the engines and the workers serve starts are all spawned from this directory.
    with HostProcess(2, "--engines", "2", "--bot", "mybot:bot", program=[str(CONSOLE_SCRIPT)], cwd=tmp_path) as host:
        await echoes(host)
    assert "instead of the host's" not in host.log()


def install_into_fresh_venv(tmp_path: Path) -> Path:
    """``pip install`` of the host, not editable, from what the Dockerfile copies, into a new venv; its bin directory.

    The new venv sees this venv's packages for the dependencies (--no-deps, no
    index needed), but not this checkout: the path file names this venv's
    site-packages only, so its editable install of the host is not read.
    """
    sources = tmp_path / "sources"
    for name in copied_sources():
        source, target = REPO / name, sources / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = run_python(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path)
    Path(site_packages, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(sources)],
        check=True, timeout=300,
    )
    return venv / "bin"


def run_python(python: Path, code: str, cwd: Path) -> str:
    """What a piece of Python code prints, run by ``python`` from ``cwd``."""
    return subprocess.run(
        [python, "-c", code], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    ).stdout.rstrip("\n")


@pytest.fixture
def installed(tmp_path) -> tuple[Path, Path]:
    """The bin directory of a fresh install of the host, and an empty directory to run it from."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return install_into_fresh_venv(tmp_path), elsewhere


async def test_an_installed_host_runs_with_its_defaults_from_any_directory(installed):
    bin_dir, elsewhere = installed
    # The host below imports as this does (same interpreter, environment and directory): not from this checkout.
    found = run_python(
        bin_dir / "python",
        "import engine, workers.demo_bot; from engine.common.settings import DEFAULT_CONFIG_FILE\n"
        "print(engine.__file__); print(DEFAULT_CONFIG_FILE); print(DEFAULT_CONFIG_FILE.read_text())",
        elsewhere,
    )
    engine_file, config_file, config_text = found.split("\n", 2)
    assert Path(engine_file).is_relative_to(bin_dir.parent) and Path(config_file).is_relative_to(bin_dir.parent)
    assert config_text == (REPO / "config" / "host.toml").read_text().rstrip("\n")
    with HostProcess(1, program=[str(bin_dir / "smallwebrtc-host")], cwd=elsewhere) as host:
        for path in ("/", "/static/demo.js", "/static/demo.css"):
            status, _ = await request("GET", host.base_url + path)
            assert status == 200, path
        await echoes(host)
