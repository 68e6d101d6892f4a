"""Fixtures shared by the unit tests (helpers that are not fixtures: tests/wire_helpers.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def quiet_server_logs() -> Iterator[None]:
    """Hostile input is logged at WARNING/ERROR by design; keep the test output readable.
    Modules of server tests use it for every test:
    pytestmark = pytest.mark.usefixtures("quiet_server_logs")."""
    logger = logging.getLogger("mlustre")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)
