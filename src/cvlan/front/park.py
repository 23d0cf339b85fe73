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
polls parked while it was down, are forwarded again when it is ready.

With several controller processes (docs/FRONT.md, "Several controllers") a worker keeps one stream
from each. Every controller hears of every change (its own, and the others' over LISTEN/NOTIFY), so a
poll parked from one controller's answer waits for that controller's stream, whose wake counts its
answer carries. When a stream is lost while another is up, the polls parked under it are forwarded
again at once: they go to a controller that is up."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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
    park_backend: int
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


class Stream:
    """One controller's event stream as a worker sees it, and the polls parked from its answers."""

    def __init__(self, index: int, path: Path) -> None:
        self.index = index
        self.path = path
        self.ready = False
        """The stream is up: wakes are heard."""
        self.latest: dict[int, int] = {}
        """The last wake count heard per CVLAN on the current stream."""
        self.by_cvlan: dict[int, set[Parkable]] = {}

    def take_all(self) -> list[Parkable]:
        held, self.by_cvlan = self.by_cvlan, {}
        return [c for conns in held.values() for c in conns]


Health = Callable[[int, bool], None]
"""Told (controller index, whether its stream is up) when a stream becomes ready or is lost."""


class Parking:
    """One worker's parked polls, by controller and CVLAN, and its event streams from the controllers."""

    def __init__(
        self,
        paths: Path | Sequence[Path],
        now: Callable[[], float] = time.monotonic,
        health: Health | None = None,
    ) -> None:
        paths = [paths] if isinstance(paths, Path) else list(paths)
        self.streams = [Stream(i, p) for i, p in enumerate(paths)]
        self.now = now
        self.health = health
        self.gen = 0
        """How many times a stream became ready; a poll forwarded under an older count is forwarded again."""
        self.waits: dict[int, deque[tuple[float, Parkable]]] = {}
        """Parked polls by their wait (seconds), in the order their waits end."""
        self.parked = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        """Some stream is up."""
        return any(s.ready for s in self.streams)

    def start(self) -> None:
        for st in self.streams:  # a controller is preferred once its stream is ready
            if self.health is not None:
                self.health(st.index, False)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._stream_loop(s)) for s in self.streams]
        self._tasks.append(loop.create_task(self._tick_loop()))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    # --- parking ------------------------------------------------------------------------------

    def park(self, conn: Parkable, cid: int, wakes: int, wait: int, backend: int = 0) -> bool:
        """Keep `conn`'s poll, answered by controller `backend`, until that controller wakes CVLAN
        `cid` or `wait` seconds pass. False: it must be forwarded again now (a wake was heard since,
        a stream became ready while it was forwarded, or its controller's stream is lost and
        another's is up)."""
        s = self.streams[backend]
        if s.ready:
            if conn.poll_gen != self.gen or s.latest.get(cid, 0) > wakes:
                return False
        elif self.ready:
            return False
        until = self.now() + wait
        conn.park_cid, conn.park_backend, conn.park_until = cid, backend, until
        s.by_cvlan.setdefault(cid, set()).add(conn)
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
        by_cvlan = self.streams[conn.park_backend].by_cvlan
        held = by_cvlan.get(cid)
        if held is not None:
            held.discard(conn)
            if not held:
                del by_cvlan[cid]

    def woken(self, cid: int, wakes: int, backend: int = 0) -> None:
        """Controller `backend` woke CVLAN `cid`'s long-polls: forward the polls it parked again."""
        s = self.streams[backend]
        s.latest[cid] = wakes
        self._reforward(s.by_cvlan.pop(cid, set()))

    def _reforward(self, conns: Iterable[Parkable]) -> None:
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

    # --- the event streams --------------------------------------------------------------------

    def on_ready(self, backend: int = 0) -> None:
        s = self.streams[backend]
        s.ready = True
        self.gen += 1
        if self.health is not None:
            self.health(backend, True)
        log.info("event stream from the controller ready (%d polls parked)", self.parked)
        # parked while this stream was down or under its last one, and under streams still down
        self._reforward([c for x in self.streams if x is s or not x.ready for c in x.take_all()])

    def on_lost(self, backend: int = 0) -> None:
        s = self.streams[backend]
        if s.ready:
            log.warning(
                "event stream from the controller lost; reconnecting (%d polls parked)",
                self.parked,
                extra={"reason": str(s.path)},
            )
        if self.health is not None:  # also a stream never ready: its polls must not come back to it
            self.health(backend, False)
        s.ready = False
        s.latest.clear()
        if self.ready:  # another controller is up: its parked polls go there now
            self._reforward(s.take_all())

    async def _stream_loop(self, s: Stream) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        loop = asyncio.get_running_loop()
        while True:
            done = loop.create_future()
            try:
                await loop.create_unix_connection(
                    functools.partial(EventStream, self, done, s.index), str(s.path)
                )
            except OSError as e:
                if s.ready or backoff.attempt == 0:
                    log.warning(
                        "cannot reach the controller for its event stream", extra={"reason": f"{s.path}: {e}"}
                    )
            else:
                await done
            if s.ready:
                backoff.reset()
            self.on_lost(s.index)
            await asyncio.sleep(backoff.next())


class EventStream(asyncio.Protocol):
    """The controller's event stream: after the response head, "ready", then "<CVLAN id> <wakes>" lines."""

    def __init__(self, parking: Parking, done: asyncio.Future[None], backend: int = 0) -> None:
        self.parking = parking
        self.done = done
        self.backend = backend
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
                self.parking.on_ready(self.backend)
                continue
            try:
                cid, wakes = (int(x) for x in line.split())
            except ValueError:
                self._fail("event stream: unreadable line")
                return
            self.parking.woken(cid, wakes, self.backend)

    def _fail(self, reason: str) -> None:
        log.warning(reason)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done.done():
            self.done.set_result(None)
