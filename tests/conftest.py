"""Shared fixtures: the database matrix (SQLite and a real, ephemeral PostgreSQL) and a running controller."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from cvlan.devtools.pgcluster import PgCluster
from tests.harness.controller import RunningController

# No timed tests: hypothesis's default 200 ms per example failed a property test under coverage on
# the loaded 2-core machine (288 ms). The properties and example counts stay as they are.
settings.register_profile("cvlan", deadline=None)
settings.load_profile("cvlan")

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the whole run, in a temp dir, socket only; removed at the end."""
    cluster = PgCluster(fsync=False).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend: every integration test runs on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cvlan.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_db(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture
async def controller(db_url: str, tmp_path: Path) -> AsyncIterator[RunningController]:
    rc = await RunningController(tmp_path / "data", db_url).start()
    try:
        yield rc
    finally:
        await rc.stop()


@pytest.fixture
async def sqlite_controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    """A controller on SQLite only, for tests whose subject is not the database (relays, join)."""
    rc = await RunningController(tmp_path / "ctrl", f"sqlite+aiosqlite:///{tmp_path / 'c.db'}").start()
    try:
        yield rc
    finally:
        await rc.stop()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two workers (`-n 2`). The end-to-end tests are one scope, run one after
    another on one worker: they build namespaces, start daemons and wait on real timers, and two of
    them at once on a 2-core machine would compete for the cores their waits assume (and each would
    build the packages of tests/e2e/test_packages.py again). Every other file is a scope of its own
    (its module fixtures are built once) on the other worker. Called only when workers run."""
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return EndToEndTogether(config, log)
