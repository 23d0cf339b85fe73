"""Fixtures shared by integration tests (the database matrix and controllers: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.controller import RunningController
from tests.harness.relay import Relays


@pytest.fixture
async def relays(sqlite_controller: RunningController, tmp_path: Path) -> AsyncIterator[Relays]:
    """Relays started on demand and nodes of tenant acme, on a SQLite controller; the relays are
    stopped at the end."""
    setup = Relays(sqlite_controller, tmp_path)
    try:
        yield setup
    finally:
        await setup.close()
