"""Long-polls parked at the front (docs/FRONT.md, "Long-polls").

A node's long-poll is forwarded with `X-Cvlan-Park: 1`; the controller never holds it: it answers at
once, with the map if the node's is stale, or with the "unchanged" answer it would give at the end of
the wait plus `X-Cvlan-Parked: <CVLAN id> <wake count> <seconds>`. The front then keeps the poll --
the connection, the request body and that answer, a few hundred bytes -- under its CVLAN, and learns
from one event stream per worker (GET /v1/front/events on the controller's proxy socket) each time
a CVLAN's long-polls would have been woken at the controller: it forwards the CVLAN's parked polls
again (they get the new map), or answers a poll "unchanged" itself when its wait is over. No backend
connection is held while a node waits, so any number of nodes may wait behind a few of them.

The stream and the answers travel on different connections. A wake that the front hears of before
the answer that parks a poll is caught by the wake count: a poll parked at a count below the latest
one heard is forwarded again at once. Polls forwarded before the stream was (re)established, and all
polls parked while it was down, are forwarded again when it is ready."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cvlan.common.backoff import Backoff

log = logging.getLogger(__name__)

EVENTS_REQUEST = b"GET /v1/front/events HTTP/1.1\r\nHost: cvlan-front\r\n\r\n"
PARKED = b"\r\nX-Cvlan-Parked: "
MAX_LINE = 256
TICK_S = 0.25
"""How often waits that are over are answered: a wait may last this much longer than asked."""


class Parkable(Protocol):
    """A node connection whose poll can be parked (server.FrontConn)."""

    park_cid: int
    park_until: float
    poll_gen: int

    def park_expired(self) -> None: ...

    def reforward(self) -> None: ...


def parked_answer(response: bytes) -> tuple[bytes, int, int, int] | None:
    """(the answer without X-Cvlan-Parked, CVLAN id, wake count, seconds to wait) if the controller
    said the poll may be parked, else None."""
    end = response.find(b"\r\n\r\n")
    i = response.find(PARKED, 0, end)
    if i < 0:
        return None
    j = response.find(b"\r\n", i + 2)
    try:
        cid, wakes, wait = (int(x) for x in response[i + len(PARKED) : j].split())
    except ValueError:
        return None
    return response[:i] + response[j:], cid, wakes, wait


class Parking:
    """One worker's parked polls, by CVLAN, and its event stream from the controller."""

    def __init__(self, path: Path, now: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.now = now
        self.ready = False
        """The event stream is up: wakes are heard."""
        self.gen = 0
        """How many times the stream became ready; a poll forwarded under an older one is forwarded again."""
        self.latest: dict[int, int] = {}
        """The last wake count heard per CVLAN on the current stream."""
        self.by_cvlan: dict[int, set[Parkable]] = {}
        self.waits: dict[int, deque[tuple[float, Parkable]]] = {}
        """Parked polls by their wait (seconds), in the order their waits end."""
        self.parked = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._stream_loop()), loop.create_task(self._tick_loop())]

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    # --- parking ------------------------------------------------------------------------------

    def park(self, conn: Parkable, cid: int, wakes: int, wait: int) -> bool:
        """Keep `conn`'s poll until CVLAN `cid` is woken or `wait` seconds pass. False: it must be
        forwarded again now (a wake was heard since, or the stream changed while it was forwarded)."""
        if self.ready and (conn.poll_gen != self.gen or self.latest.get(cid, 0) > wakes):
            return False
        until = self.now() + wait
        conn.park_cid, conn.park_until = cid, until
        self.by_cvlan.setdefault(cid, set()).add(conn)
        dq = self.waits.get(wait)
        if dq is None:
            dq = self.waits[wait] = deque()
        dq.append((until, conn))
        self.parked += 1
        return True

    def unpark(self, conn: Parkable) -> None:
        """`conn`'s poll is no longer parked (answered, forwarded again, or its connection closed)."""
        cid = conn.park_cid
        if cid < 0:
            return
        conn.park_cid = -1
        self.parked -= 1
        held = self.by_cvlan.get(cid)
        if held is not None:
            held.discard(conn)
            if not held:
                del self.by_cvlan[cid]

    def woken(self, cid: int, wakes: int) -> None:
        """The controller woke CVLAN `cid`'s long-polls: forward its parked polls again."""
        self.latest[cid] = wakes
        held = self.by_cvlan.pop(cid, None)
        for conn in held or ():
            conn.park_cid = -1
            self.parked -= 1
            conn.reforward()

    def _reforward_all(self) -> None:
        held, self.by_cvlan = self.by_cvlan, {}
        for conns in held.values():
            for conn in conns:
                conn.park_cid = -1
                self.parked -= 1
                conn.reforward()

    def expire(self) -> None:
        """Answer the polls whose wait is over ("unchanged", as the controller would)."""
        now = self.now()
        for dq in self.waits.values():
            while dq and dq[0][0] <= now:
                until, conn = dq.popleft()
                if conn.park_cid >= 0 and conn.park_until == until:
                    self.unpark(conn)
                    conn.park_expired()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.expire()

    # --- the event stream ---------------------------------------------------------------------

    def on_ready(self) -> None:
        self.ready = True
        self.gen += 1
        log.info("event stream from the controller ready (%d polls parked)", self.parked)
        self._reforward_all()  # parked while the stream was down, or under the last one

    def on_lost(self) -> None:
        if self.ready:
            log.warning("event stream from the controller lost; reconnecting (%d polls parked)", self.parked)
        self.ready = False
        self.latest.clear()

    async def _stream_loop(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        loop = asyncio.get_running_loop()
        while True:
            done = loop.create_future()
            try:
                await loop.create_unix_connection(functools.partial(EventStream, self, done), str(self.path))
            except OSError as e:
                log.warning("cannot reach the controller for its event stream", extra={"reason": str(e)})
            else:
                await done
            if self.ready:
                backoff.reset()
            self.on_lost()
            await asyncio.sleep(backoff.next())


class EventStream(asyncio.Protocol):
    """The controller's event stream: after the response head, "ready", then "<CVLAN id> <wakes>" lines."""

    def __init__(self, parking: Parking, done: asyncio.Future[None]) -> None:
        self.parking = parking
        self.done = done
        self.buf = b""
        self.head = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(EVENTS_REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16 * 1024:
                    self._fail("event stream: response head too large")
                return
            if not self.buf.startswith(b"HTTP/1.1 200 "):
                self._fail("event stream refused: " + self.buf[:60].decode("latin-1").split("\r\n")[0])
                return
            self.head = True
            self.buf = self.buf[end + 4 :]
        lines = self.buf.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_LINE:
            self._fail("event stream: line too long")
            return
        for line in lines:
            if line == b"ready":
                self.parking.on_ready()
                continue
            try:
                cid, wakes = (int(x) for x in line.split())
            except ValueError:
                self._fail("event stream: unreadable line")
                return
            self.parking.woken(cid, wakes)

    def _fail(self, reason: str) -> None:
        log.warning(reason)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done.done():
            self.done.set_result(None)
