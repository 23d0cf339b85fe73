"""Two controller processes on one PostgreSQL: a change made through one reaches nodes polling the other,
also after their connections to PostgreSQL were cut."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import text

from cvlan.client import tls
from cvlan.client.controller import NodeApiClient
from cvlan.common.backoff import Backoff
from cvlan.controller.db.engine import create_engine
from cvlan.controller.mapper import fanout
from cvlan.controller.mapper.cache import Mapper
from cvlan.controller.mapper.fanout import Fanout
from tests.harness.controller import RunningController
from tests.harness.nodes import ca_pem, enrol, make_token


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_join_and_endpoints_fan_out_between_controllers(db_url: str, tmp_path: Path) -> None:
    one = await RunningController(tmp_path / "data", db_url).start()
    two = await RunningController(tmp_path / "data", db_url).start()  # same CA, same database
    two.admin_token = one.admin_token
    try:
        token = await make_token(one, uses=3)
        a = await enrol(one, token, "alpha")
        held = (await a.client.poll(0)).map_version
        waiting = asyncio.create_task(a.client.poll(held, long_poll_s=30))
        await asyncio.sleep(0.3)
        key_pem, csr = tls.new_key_and_csr()
        anon = NodeApiClient(two.url, ca_pem(two))
        wg = os.urandom(32)
        reg = await anon.register(token, wg, csr, "beta")  # committed by the other process
        await anon.close()
        got = await asyncio.wait_for(waiting, 10)
        assert [p.node_id for p in got.map.peers] == [reg.node_id]
        # Endpoints reported to controller two reach node alpha on controller one.
        b = NodeApiClient(two.url, ca_pem(two), reg.certificate_pem, key_pem)
        waiting = asyncio.create_task(a.client.poll(got.map_version, long_poll_s=30))
        await asyncio.sleep(0.3)
        await b.poll(0, endpoints=["198.51.100.20:51820"])
        got = await asyncio.wait_for(waiting, 10)
        assert list(got.map.peers[0].endpoints) == ["198.51.100.20:51820"]
        await b.close()
        await a.client.close()
    finally:
        await two.stop()
        await one.stop()


class HeardMaps:
    """What a controller's map cache hears from the fan-out (a stand-in for Mapper: only the calls)."""

    def __init__(self) -> None:
        self.announce_changed: Callable[[set[int]], None] | None = None
        self.announce_endpoints: Callable[[int, int, list[str], str], None] | None = None
        self.changed: set[int] = set()
        self.everything = 0

    def invalidate(self, cvlan_ids: set[int]) -> None:
        self.changed |= cvlan_ids

    def invalidate_all(self) -> None:
        self.everything += 1

    def apply_endpoints(self, cvlan_id: int, node_id: int, endpoints: list[str], region: str) -> None:
        self.changed.add(cvlan_id)


async def _until(what: Callable[[], bool], seconds: float = 15.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if what():
            return True
        await asyncio.sleep(0.05)
    return what()


async def _cut(url: str, pids: list[int] | None = None) -> None:
    """End the database's connections (those of `pids`, or all but this one), as a restart does."""
    engine = create_engine(url, pool_size=1)
    stmt = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
    try:
        async with engine.connect() as c:
            if pids:
                await c.execute(text(stmt + " AND pid = ANY(:pids)"), {"pids": pids})
            else:
                await c.execute(text(stmt + " AND pid <> pg_backend_pid()"))
    finally:
        await engine.dispose()


@pytest.fixture
async def fanouts(db_url: str) -> AsyncIterator[tuple[list[Fanout], list[HeardMaps]]]:
    """Two controllers' fan-outs on one PostgreSQL, each with its own connection pool."""
    engines = [create_engine(db_url, pool_size=4) for _ in range(2)]
    heard = [HeardMaps(), HeardMaps()]
    fans = [Fanout(cast(Mapper, h), e) for h, e in zip(heard, engines, strict=True)]
    try:
        for f in fans:
            assert await f.start()
        yield fans, heard
    finally:
        for f in fans:
            await f.stop()
        for e in engines:
            await e.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_fan_out_listens_again_when_every_database_connection_was_cut(
    db_url: str, fanouts: tuple[list[Fanout], list[HeardMaps]]
) -> None:
    """A PostgreSQL restart ends the listening connection and the idle ones of the pool alike. The
    fan-out listens again by itself and reloads every map; it used to be handed a dead pooled
    connection first, fail with the driver's own error and never listen again (changes made through
    the other controller then never reached its nodes)."""
    (one, two), (heard_one, _) = fanouts
    for f in (one, two):  # idle connections in each pool, as a serving controller has
        async with f.engine.connect() as c1, f.engine.connect() as c2:
            await c1.execute(text("SELECT 1"))
            await c2.execute(text("SELECT 1"))
    await _cut(db_url)
    assert await _until(lambda: one.reconnects >= 1 and two.reconnects >= 1), "not listening again"
    assert heard_one.everything >= 1  # every map loaded afresh: announcements may have been missed
    two.changed({41})
    assert await _until(lambda: 41 in heard_one.changed)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_change_announced_while_the_listening_connection_is_down_is_sent_when_it_is_back(
    db_url: str, fanouts: tuple[list[Fanout], list[HeardMaps]]
) -> None:
    """A change committed while the announcing controller's own listening connection is down (the
    database itself still answers) is announced once that connection is back: it used to be dropped,
    and the other controller, which never lost its connection, kept serving the map of before."""
    (one, two), (heard_one, _) = fanouts
    assert two._pg is not None
    two.backoff = Backoff(1.0, 1.0, rng=_Longest())  # down for a whole second
    await _cut(db_url, [two._pg.get_server_pid()])
    assert await _until(lambda: not two._up.is_set())
    assert two.reconnects == 0
    two.changed({42})
    assert await _until(lambda: 42 in heard_one.changed)
    assert two.reconnects == 1 and heard_one.everything == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_listening_connection_that_stops_answering_is_replaced(
    db_url: str, fanouts: tuple[list[Fanout], list[HeardMaps]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database host that vanishes closes no socket: the driver never says the connection ended.
    Its backend stopped (SIGSTOP) is such a connection: the fan-out notices it does not answer, listens
    on a new one, and announcements flow again."""
    monkeypatch.setattr(fanout, "CHECK_S", 0.5)
    monkeypatch.setattr(fanout, "CHECK_TIMEOUT_S", 1.0)
    (one, two), (heard_one, _) = fanouts
    assert two._pg is not None
    silent = two._pg.get_server_pid()
    os.kill(silent, signal.SIGSTOP)
    try:
        assert await _until(lambda: two.reconnects == 1), "the silent connection was not replaced"
        two.changed({43})
        assert await _until(lambda: 43 in heard_one.changed)
    finally:
        os.kill(silent, signal.SIGCONT)
        await _cut(db_url, [silent])


class _Longest(random.Random):
    """Draws the longest wait a backoff allows (its ceiling), so a test knows how long it waits."""

    def uniform(self, a: float, b: float) -> float:
        return b
