"""What the code under test logs, for the tests that check it says something once."""

import contextlib
from collections.abc import Iterator

from loguru import logger


@contextlib.contextmanager
def warnings_logged() -> Iterator[list]:
    """The log records of WARNING and above while inside."""
    records: list = []
    sink = logger.add(lambda message: records.append(message.record), level="WARNING")
    try:
        yield records
    finally:
        logger.remove(sink)
