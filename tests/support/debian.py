"""Debian packages the tests need on the machine (Chromium, npm, HAProxy, coturn, iptables...), installed with apt-get when missing.

A test that cannot get its tool is skipped, saying why, except in CI
(``CI=true``), where it fails instead: CI must not pass by running nothing.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skips the test, except in CI, where a test that cannot run is a failure."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _apt_get(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], check=False, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def install_debian_package(package: str, provides: Path) -> str | None:
    """Installs a Debian package that provides ``provides``; returns why it could not, or None."""
    if os.geteuid() != 0:
        return f"{provides} is missing, and installing it (apt-get install -y {package}) needs root"
    if shutil.which("apt-get") is None:
        return f"{provides} is missing, and there is no apt-get to install Debian's {package}"
    result = _apt_get("install", "-y", package, timeout=1200)
    if result.returncode != 0:
        # A new machine's package lists may be missing or stale.
        update = _apt_get("update", timeout=600)
        result = _apt_get("install", "-y", package, timeout=1200)
        if result.returncode != 0:
            return f"apt-get install -y {package} failed:\n{update.stderr[-2000:]}\n{result.stderr[-2000:]}"
    return None if provides.exists() else f"apt-get installed {package}, but {provides} is missing"


def debian_tool(program: Path, package: str) -> Path:
    """``program``, from Debian's ``package`` (installed when the program is missing); skips or fails without it."""
    if not program.exists():
        reason = install_debian_package(package, program)
        if reason:
            unavailable(reason)
    return program
