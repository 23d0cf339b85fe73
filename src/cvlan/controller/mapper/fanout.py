"""Map changes fanned out between controller processes that share one PostgreSQL (LISTEN/NOTIFY).

Each process keeps its maps in memory. A committed change (ops.context.bump -> on_cvlan_changed)
and an endpoint change reported by a poll are announced on one channel; the other processes drop
or update their copy and wake their long-polls. A process ignores its own announcements. On SQLite
(one process by nature) nothing is started.

When the listening connection is lost (PostgreSQL restarted), it is opened again with backoff, and
then every map held is dropped and every long-poll woken: announcements made while it was away were
not heard, and the maps are loaded again from what was committed. Any failure to listen again is
retried (a restart leaves dead connections in the pool, and the driver reports them with its own
errors). This process's own announcements made meanwhile are kept and sent once it listens again:
another process that never lost its connection would not reload its maps by itself.

The driver says when the connection's socket closes, but not when the database host vanished
without closing it (a crash, a partition): while no announcement goes out, the listening connection
is asked `SELECT 1` every CHECK_S, and one that does not answer within CHECK_TIMEOUT_S is taken as
lost like a closed one."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cvlan.common.backoff import Backoff
from cvlan.controller.mapper.cache import Mapper

log = logging.getLogger(__name__)

CHANNEL = "cvlan_map"
MAX_PAYLOAD = 7900
"""PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more; bigger id sets are split."""
CHECK_S = 5.0
"""How long the listening connection may stay quiet before it is asked whether it is still there."""
CHECK_TIMEOUT_S = 5.0


class Fanout:
    def __init__(self, mapper: Mapper, engine: AsyncEngine) -> None:
        self.mapper = mapper
        self.engine = engine
        self.instance = secrets.token_hex(6)
        self.received = 0
        self._conn: AsyncConnection | None = None
        self._pg: Any = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        """Set while the listening connection (which also sends the announcements) is open."""
        self.reconnects = 0
        """How many times the listening connection was opened again after it was lost."""
        self.backoff = Backoff(base=0.2, cap=5.0)
        """The waits before each attempt to listen again."""

    async def start(self) -> bool:
        """Listen (PostgreSQL only). Returns whether fan-out is active."""
        if self.engine.dialect.name != "postgresql":
            return False
        await self._listen()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._send(), name="map-fanout")
        self._watch = loop.create_task(self._keep_listening(), name="map-fanout-listen")
        self.mapper.announce_changed = self.changed
        self.mapper.announce_endpoints = self.endpoints
        return True

    async def _listen(self) -> None:
        lost = self._lost = asyncio.Event()  # this connection's: a late end of the last one is not ours
        self._conn = await self.engine.connect()
        raw = await self._conn.get_raw_connection()
        self._pg = raw.driver_connection
        self._pg.add_termination_listener(lambda _conn: lost.set())
        await self._pg.add_listener(CHANNEL, self._on_notify)
        if self._pg.is_closed():  # lost before its termination listener was in place
            raise ConnectionError("the listening connection closed as it was opened")
        self._up.set()

    async def _keep_listening(self) -> None:
        """Open the listening connection again whenever it is lost; then reload every map."""
        backoff = self.backoff
        while True:
            await self._lost.wait()
            log.warning("map fan-out: the listening connection to PostgreSQL was lost; reconnecting")
            await self._close_conn()
            while True:
                await asyncio.sleep(backoff.next())
                try:
                    await self._listen()
                    break
                except Exception as e:  # noqa: BLE001 - a dead pooled connection fails with the driver's errors
                    log.debug("map fan-out: cannot listen yet", extra={"reason": str(e)[:200]})
                    await self._close_conn()
            backoff.reset()
            self.reconnects += 1
            self.mapper.invalidate_all()
            log.info("map fan-out listening again; every map is loaded afresh")

    async def _close_conn(self) -> None:
        self._up.clear()
        conn, self._conn, self._pg = self._conn, None, None
        if conn is not None:
            try:
                await conn.invalidate()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass

    async def stop(self) -> None:
        self.mapper.announce_changed = None
        self.mapper.announce_endpoints = None
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._pg is not None:
            try:
                await self._pg.remove_listener(CHANNEL, self._on_notify)
            except Exception:  # noqa: BLE001 - the connection may already be gone
                pass
        if self._conn is not None:
            await self._conn.close()

    # --- outgoing --------------------------------------------------------------------------

    def changed(self, cvlan_ids: set[int]) -> None:
        ids = sorted(cvlan_ids)
        while ids:
            chunk, ids = ids[:900], ids[900:]
            self._put(f"c {self.instance} {','.join(map(str, chunk))}")

    def endpoints(self, cvlan_id: int, node_id: int, endpoints: list[str], region: str) -> None:
        self._put(f"e {self.instance} {cvlan_id} {node_id} {json.dumps([endpoints, region])}")

    def _put(self, payload: str) -> None:
        if len(payload) >= MAX_PAYLOAD:
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("map fan-out queue full; dropping an announcement", extra={"reason": "queue_full"})

    async def _send(self) -> None:
        """Send the announcements in order. One that cannot be sent because the connection is down
        waits for it to be back (announcements are idempotent: one sent twice does no harm)."""
        payload: str | None = None
        getter: asyncio.Future[str] | None = None
        try:
            while True:
                if payload is None:
                    # Not wait_for: in Python 3.11 a get that completes as the timeout fires loses its
                    # item (an announcement). The get stays pending across the checks instead.
                    if getter is None:
                        getter = asyncio.ensure_future(self._queue.get())
                    await asyncio.wait((getter,), timeout=CHECK_S)
                    if not getter.done():
                        await self._check()
                        continue
                    payload, getter = getter.result(), None
                payload = await self._send_one(payload)
        finally:
            if getter is not None:
                getter.cancel()

    async def _send_one(self, payload: str) -> str | None:
        """Try to send one announcement: None once sent (or given up after a refusal), else the
        payload, to be tried again (the connection is down or being opened again)."""
        pg = self._pg
        if pg is None:  # listening again: wait for it (_up is clear while there is no connection)
            await self._up.wait()
            return payload
        if pg.is_closed():  # lost: let _keep_listening see it and open another
            self._lost.set()
            await asyncio.sleep(0.05)
            return payload
        try:
            await pg.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except Exception as e:  # noqa: BLE001 - keep the sender alive
            log.warning("map fan-out NOTIFY failed", extra={"reason": str(e)[:200]})
            if pg.is_closed():
                self._lost.set()
                return payload  # sent again once listening again
            await asyncio.sleep(1)
        return None

    async def _check(self) -> None:
        """Ask the listening connection whether it is still there (on the sender's task: the
        connection carries one query at a time); take it as lost if it does not answer."""
        pg = self._pg
        if pg is None:
            return
        try:
            await asyncio.wait_for(pg.execute("SELECT 1"), CHECK_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - closed, broken or silent: all mean lost
            if self._pg is pg:
                log.warning(
                    "map fan-out: the listening connection does not answer", extra={"reason": str(e)[:200]}
                )
                self._lost.set()

    # --- incoming --------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            kind, instance, rest = payload.split(" ", 2)
            if instance == self.instance:
                return
            self.received += 1
            if kind == "c":
                self.mapper.invalidate({int(x) for x in rest.split(",") if x})
            elif kind == "e":
                cid, nid, body = rest.split(" ", 2)
                eps, region = json.loads(body)
                self.mapper.apply_endpoints(int(cid), int(nid), [str(e) for e in eps], str(region))
        except (ValueError, TypeError) as e:
            log.warning("map fan-out: unreadable announcement", extra={"reason": str(e)[:200]})
