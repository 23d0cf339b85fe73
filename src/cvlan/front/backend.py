"""The front's connections to the controllers' proxy sockets: a small pool of plain HTTP/1.1
keep-alive connections per controller process that carry every node's requests, one request at a
time each, balanced over the controllers that are up (docs/FRONT.md, "Several controllers")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvlan.common.backoff import Backoff

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD = 16 * 1024
MAX_RESPONSE = 8 * 1024 * 1024

Done = Callable[[bytes | None, bool, int], None]
"""Called once per request with (the whole response, whether the client connection may stay open,
the index of the controller that answered); None and -1 when no controller could answer (the front
answers 502 itself)."""


class ResponseParser:
    """Finds where one HTTP/1.1 response ends: Content-Length, chunked, or the end of the
    connection. Keeps the bytes; `done` and `keep` say what the response was."""

    __slots__ = ("buf", "head_end", "length", "chunked", "scan", "keep", "done", "no_body")

    def __init__(self, no_body: bool = False) -> None:
        self.buf = bytearray()
        self.head_end = -1
        self.length = -1
        self.chunked = False
        self.scan = 0
        self.keep = True
        self.done = False
        self.no_body = no_body

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_RESPONSE_HEAD:
                    raise ValueError("response head too large")
                return
            self.head_end = end + 4
            self._parse_head(bytes(self.buf[:end]))
            self.scan = self.head_end
        if len(self.buf) > MAX_RESPONSE:
            raise ValueError("response too large")
        if self.no_body:
            self.done = True
        elif self.chunked:
            self._scan_chunks()
        elif self.length >= 0:
            self.done = len(self.buf) >= self.head_end + self.length
            if len(self.buf) > self.head_end + self.length:
                raise ValueError("more bytes than the response's Content-Length")

    def eof(self) -> bool:
        """The connection ended: True if that completes the response (one without a length)."""
        if self.head_end >= 0 and self.length < 0 and not self.chunked and not self.no_body:
            self.done = True
            self.keep = False
        return self.done

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            raise ValueError("malformed status line")
        code = int(status[1])
        if code < 200:
            raise ValueError(f"interim response {code}")  # no Expect is forwarded
        if code in (204, 304):
            self.no_body = True
        if status[0] == b"HTTP/1.0":
            self.keep = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                if not value.isdigit():
                    raise ValueError("malformed Content-Length")
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = value.endswith(b"chunked")
            elif name == b"connection":
                if b"close" in value:
                    self.keep = False
                elif b"keep-alive" in value:
                    self.keep = True
        if self.length < 0 and not self.chunked and not self.no_body:
            self.keep = False  # delimited by the end of the connection

    def _scan_chunks(self) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", self.scan)
            if eol < 0:
                return
            size_text = bytes(buf[self.scan : eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError("malformed chunk size") from None
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # trailers end with an empty line
                if end < 0:
                    return
                if end + 4 != len(buf):
                    raise ValueError("bytes after the last chunk")
                self.done = True
                return
            nxt = eol + 2 + size + 2
            if len(buf) < nxt:
                return
            self.scan = nxt


class BackendConn(asyncio.Protocol):
    def __init__(self, pool: BackendPool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.pending: Pending | None = None
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, pending: Pending) -> None:
        assert self.transport is not None
        self.parser = ResponseParser(pending.no_body)
        self.pending = pending
        if pending.slow:
            self.backend.slow_busy += 1
        self.started = time.monotonic()
        self.transport.write(pending.request)

    def data_received(self, data: bytes) -> None:
        p = self.parser
        if p is None:
            self._fail("bytes from the controller with no request outstanding")
            return
        try:
            p.feed(data)
        except ValueError as e:
            self._fail(str(e))
            return
        if p.done:
            self._finish(p.keep)

    def eof_received(self) -> bool:
        if self.parser is not None and self.parser.eof():
            self._finish(False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)
        pending, self.pending, self.parser = self.pending, None, None
        self.transport = None
        if pending is not None:
            self._ended(pending)
            self.pool.lost_in_flight(self.backend, pending)

    def _ended(self, pending: Pending) -> None:
        """`pending` no longer holds this connection."""
        if pending.slow:
            self.backend.slow_busy -= 1

    def _finish(self, keep: bool) -> None:
        assert self.parser is not None and self.pending is not None
        body, pending = bytes(self.parser.buf), self.pending
        self.parser = self.pending = None
        self._ended(pending)
        if keep and self.transport is not None and not self.transport.is_closing():
            self.pool.release(self)
        else:
            self.close()
        pending.done(body, keep, self.backend.index)

    def _fail(self, reason: str) -> None:
        """The controller answered something unreadable, or not in time: the request is not sent
        again (it may have been carried out), and the connection is closed."""
        pending, self.pending, self.parser = self.pending, None, None
        if pending is not None:
            self._ended(pending)
            log.warning("controller request failed", extra={"reason": reason})
            pending.done(None, False, -1)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def timed_out(self, now: float, limit: float) -> bool:
        return self.pending is not None and now - self.started > limit


@dataclass(slots=True)
class Pending:
    """A request on its way to a controller."""

    since: float
    request: bytes
    no_body: bool
    done: Done
    retry: bool
    """Safe to send again to another controller when the connection that carried it is lost before
    the answer (server.RETRY_SAFE)."""
    slow: bool = False
    """May wait on the database at the controller (a registration, a renewal, a report): such requests
    hold at most half of a controller's connections (Backend.slow_room)."""
    tries: int = 0


class Backend:
    """One controller process's proxy socket, its connections, and whether it takes new requests."""

    def __init__(self, index: int, path: Path, size: int) -> None:
        self.index = index
        self.path = path
        self.size = size
        self.conns: set[BackendConn] = set()
        self.idle: list[BackendConn] = []
        self.opening = 0
        self.down_until = 0.0
        """Refused a connection, or lost one with a request outstanding: not chosen before this."""
        self.backoff = Backoff(base=0.2, cap=10.0)
        self.stream_down = False
        """A parking front lost this controller's event stream (park.py): not chosen while others are up."""
        self.slow_busy = 0
        """Connections carrying a slow request now."""
        self.slow_cap = max(1, size // 2)

    def up(self, now: float) -> bool:
        return not self.stream_down and now >= self.down_until

    def busy(self) -> int:
        return len(self.conns) - len(self.idle)

    def room(self) -> bool:
        return len(self.conns) + self.opening < self.size

    def failed(self, now: float) -> None:
        self.down_until = now + self.backoff.next()

    def slow_room(self) -> bool:
        """Whether another slow request may take one of its connections: at most half of them carry
        slow ones, so the others stay free for the polls answered from memory."""
        return self.slow_busy < self.slow_cap


class BackendPool:
    """Up to `size` connections to each controller's proxy socket; requests beyond them queue, and go
    to the first connection freed on a controller that is up. Parked long-polls woken together
    (park.py) queue behind every other request: a CVLAN of thousands that changed delays no one
    else's request by more than the one in progress.

    A controller is down from a refused connection, or a connection lost with a request outstanding,
    until a connection to it opens again (retried with backoff, 0.2 s to 10 s, jittered), and, for a
    parking front, while its event stream is lost. Requests go to controllers that are up; when none
    is, to any (the single-controller case: a refused connection then answers 502 at once).

    Slow requests (Pending.slow: those that wait on the database at the controller) hold at most half
    of each controller's connections and wait in a queue of their own beyond that: a registration
    burst, each registration waiting seconds for its group commit, would otherwise hold every
    connection while the polls behind it, each answered in a millisecond, wait until the queue's time
    limit and get 502 (found in a 100,000-node run: 11,673 such polls while the fleet registered)."""

    def __init__(
        self,
        paths: Path | Sequence[Path],
        size: int = 16,
        queue_timeout: float = 30.0,
        timeout: float = 120.0,
    ) -> None:
        paths = [paths] if isinstance(paths, Path) else list(paths)
        self.backends = [Backend(i, p, size) for i, p in enumerate(paths)]
        self.queue_timeout = queue_timeout
        self.timeout = timeout
        self.waiting: deque[Pending] = deque()
        self.later: deque[Pending] = deque()
        """Requests that go when no other waits (woken long-polls)."""
        self.slow_waiting: deque[Pending] = deque()
        """Slow requests that found every controller's share for them taken."""
        self.on_retry: Callable[[], None] = lambda: None
        """Told of each request sent again to another controller after a lost connection (metrics)."""

    @property
    def paths(self) -> list[Path]:
        return [b.path for b in self.backends]

    def open_conns(self) -> int:
        return sum(len(b.conns) for b in self.backends)

    def submit(
        self,
        request: bytes,
        no_body: bool,
        done: Done,
        later: bool = False,
        retry: bool = False,
        slow: bool = False,
    ) -> None:
        pending = Pending(time.monotonic(), request, no_body, done, retry, slow)
        if not self._dispatch(pending):
            self._queue_of(pending, later).append(pending)
            self._grow(fallback=True)

    def _queue_of(self, pending: Pending, later: bool = False) -> deque[Pending]:
        if later:
            return self.later
        return self.slow_waiting if pending.slow else self.waiting

    def _queued(self) -> bool:
        return bool(self.waiting or self.later or self.slow_waiting)

    def _dispatch(self, pending: Pending) -> bool:
        """Send `pending` on an idle connection of the least busy controller that is up (of any, if
        none is up); False if there is none."""
        now = time.monotonic()
        live = [b for b in self.backends if b.up(now)]
        ready = [b for b in live or self.backends if b.idle and (not pending.slow or b.slow_room())]
        if not ready:
            return False
        min(ready, key=Backend.busy).idle.pop().start(pending)
        return True

    def _grow(self, fallback: bool, tried: frozenset[int] = frozenset()) -> None:
        """Open one more connection for the queued requests, on the controller that is up with the
        fewest; with `fallback`, when none is up, on the one whose backoff ends first. `tried`: those
        that refused a connection for these requests just now (each is tried once)."""
        if not self._queued():
            return
        now = time.monotonic()
        left = [b for b in self.backends if b.index not in tried]
        live = [b for b in left if b.up(now)]
        room = [b for b in (live or (left if fallback else [])) if b.room()]
        if room:
            self._open_on(
                min(room, key=lambda b: (max(0.0, b.down_until - now), len(b.conns) + b.opening)), tried
            )

    def _open_on(self, b: Backend, tried: frozenset[int] = frozenset()) -> None:
        b.opening += 1
        asyncio.get_running_loop().create_task(self._open(b, tried | {b.index}))

    async def _open(self, b: Backend, tried: frozenset[int]) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(
                lambda: BackendConn(self, b), str(b.path)
            )
        except OSError as e:
            b.opening -= 1
            if b.up(time.monotonic()):
                log.warning("cannot reach the controller", extra={"reason": f"{b.path}: {e}"})
            b.failed(time.monotonic())
            self._grow(fallback=True, tried=tried)
            if not any(x.conns or x.opening for x in self.backends):
                self._fail_queued()  # nothing will free up: answer everyone waiting now
            return
        b.opening -= 1
        b.down_until = 0.0
        b.backoff.reset()
        b.conns.add(conn)
        self.release(conn)

    def _fail_queued(self) -> None:
        for queue in (self.waiting, self.slow_waiting, self.later):
            while queue:
                queue.popleft().done(None, False, -1)

    def release(self, conn: BackendConn) -> None:
        """`conn` is free: it takes the next queued request, unless its controller is down and another
        is up (that one's connections take the queue)."""
        b = conn.backend
        now = time.monotonic()
        if self.waiting:
            queue = self.waiting
        elif self.slow_waiting and b.slow_room():
            queue = self.slow_waiting
        else:
            queue = self.later
        if queue and (b.up(now) or not any(x.up(now) for x in self.backends)):
            conn.start(queue.popleft())
        else:
            b.idle.append(conn)

    def lost(self, conn: BackendConn) -> None:
        b = conn.backend
        b.conns.discard(conn)
        if conn in b.idle:
            b.idle.remove(conn)
        self._grow(fallback=False)

    def lost_in_flight(self, b: Backend, pending: Pending) -> None:
        """The connection carrying `pending` ended before its answer (the controller stopped or died):
        the controller is down for now; the request goes to another one if it is safe to send again,
        else it is answered 502."""
        b.failed(time.monotonic())
        log.warning(
            "controller connection lost with a request outstanding",
            extra={"reason": f"{b.path}; sent again: {'yes' if pending.retry else 'no'}"},
        )
        pending.tries += 1
        if not pending.retry or pending.tries > len(self.backends):
            pending.done(None, False, -1)
            return
        self.on_retry()
        if not self._dispatch(pending):
            self._queue_of(pending).appendleft(pending)
            self._grow(fallback=True)

    def stream_state(self, index: int, up: bool) -> None:
        """A parking front's event stream from controller `index` is up (it answers) or lost."""
        b = self.backends[index]
        b.stream_down = not up
        if up:
            b.down_until = 0.0
            b.backoff.reset()
            idle, b.idle = b.idle, []
            for conn in idle:  # each takes a queued request it may carry, or is idle again
                self.release(conn)
            self._grow(fallback=False)

    def sweep(self, now: float) -> None:
        """Fail requests that waited in the queue or at a controller too long; try again to connect to
        a controller with no connection whose backoff is over (it comes back without waiting for
        requests to queue)."""
        for queue in (self.waiting, self.slow_waiting, self.later):
            while queue and now - queue[0].since > self.queue_timeout:
                queue.popleft().done(None, False, -1)
        for b in self.backends:
            for c in list(b.conns):
                if c.timed_out(now, self.timeout):
                    c._fail("no answer from the controller in time")
            if not b.conns and not b.opening and b.room() and now >= b.down_until:
                self._open_on(b)

    def close(self) -> None:
        for b in self.backends:
            for c in list(b.conns):
                c.close()
