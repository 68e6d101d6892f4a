"""Fixtures shared by the unit tests (helpers that are not fixtures: tests/wire_helpers.py,
tests/mdt_helpers.py; MDT store fixtures are prefixed mdt_)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from mdt_helpers import open_store

from mlustre.servers.mdt.store import MdtStore


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


@pytest.fixture
def mdt_db_path(tmp_path: Path) -> Path:
    """Where an MDT store's database goes (a fresh directory per test)."""
    return tmp_path / "mdt.db"


@pytest.fixture
def mdt_store(mdt_db_path: Path) -> Iterator[MdtStore]:
    """An open MDT store with OST_COUNT OSTs, closed after the test."""
    s = open_store(mdt_db_path)
    yield s
    s.close()
