"""Fixtures every folder's tests may use."""

from pathlib import Path

import pytest
from loguru import logger

from tests.support.balancer import HAPROXY
from tests.support.debian import debian_tool


@pytest.fixture
def log_messages():
    """Every message logged in this process while the test runs."""
    messages: list[str] = []
    sink = logger.add(messages.append, format="{message}")
    yield messages
    logger.remove(sink)


@pytest.fixture(scope="session")
def haproxy() -> Path:
    """Debian's HAProxy, installed if needed (session-scoped: before any test enters a network namespace)."""
    return debian_tool(HAPROXY, "haproxy")
