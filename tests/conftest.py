"""Fixtures every folder's tests may use."""

import pytest
from loguru import logger


@pytest.fixture
def log_messages():
    """Every message logged in this process while the test runs."""
    messages: list[str] = []
    sink = logger.add(messages.append, format="{message}")
    yield messages
    logger.remove(sink)
