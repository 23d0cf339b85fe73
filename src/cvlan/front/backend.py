"""The front's connections to the controller's proxy socket: a small pool of plain HTTP/1.1
keep-alive connections that carry every node's requests, one request at a time each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD = 16 * 1024
MAX_RESPONSE = 8 * 1024 * 1024

Done = Callable[[bytes | None, bool], None]
"""Called once per request with (the whole response, whether the client connection may stay open);
None when the controller could not answer (the front answers 502/504 itself)."""


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
    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.done: Done | None = None
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, request: bytes, no_body: bool, done: Done) -> None:
        assert self.transport is not None
        self.parser = ResponseParser(no_body)
        self.done = done
        self.started = time.monotonic()
        self.transport.write(request)

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
        if self.done is not None:
            self._fail("the controller closed the connection")
        self.transport = None

    def _finish(self, keep: bool) -> None:
        assert self.parser is not None and self.done is not None
        body, done = bytes(self.parser.buf), self.done
        self.parser = self.done = None
        if keep and self.transport is not None and not self.transport.is_closing():
            self.pool.release(self)
        else:
            self.close()
        done(body, keep)

    def _fail(self, reason: str) -> None:
        done, self.done, self.parser = self.done, None, None
        if done is not None:
            log.warning("controller request failed", extra={"reason": reason})
            done(None, False)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def timed_out(self, now: float, limit: float) -> bool:
        return self.done is not None and now - self.started > limit


class BackendPool:
    """Up to `size` connections to the controller's proxy socket; requests beyond them queue. Parked
    long-polls woken together (park.py) queue behind every other request: a CVLAN of thousands that
    changed delays no one else's request by more than the one in progress."""

    def __init__(self, path: Path, size: int = 16, queue_timeout: float = 30.0, timeout: float = 120.0):
        self.path = path
        self.size = size
        self.queue_timeout = queue_timeout
        self.timeout = timeout
        self.idle: list[BackendConn] = []
        self.conns: set[BackendConn] = set()
        self.opening = 0
        self.waiting: deque[tuple[float, bytes, bool, Done]] = deque()
        self.later: deque[tuple[float, bytes, bool, Done]] = deque()
        """Requests that go when no other waits (woken long-polls)."""

    def submit(self, request: bytes, no_body: bool, done: Done, later: bool = False) -> None:
        if self.idle:
            self.idle.pop().start(request, no_body, done)
            return
        (self.later if later else self.waiting).append((time.monotonic(), request, no_body, done))
        if len(self.conns) + self.opening < self.size:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(
                lambda: BackendConn(self), str(self.path)
            )
        except OSError as e:
            self.opening -= 1
            log.warning("cannot reach the controller", extra={"reason": str(e)})
            if not self.conns:  # nothing will free up: answer everyone waiting now
                for queue in (self.waiting, self.later):
                    while queue:
                        queue.popleft()[3](None, False)
            return
        self.opening -= 1
        self.conns.add(conn)
        self.release(conn)

    def release(self, conn: BackendConn) -> None:
        queue = self.waiting or self.later
        if queue:
            _, request, no_body, done = queue.popleft()
            conn.start(request, no_body, done)
        else:
            self.idle.append(conn)

    def lost(self, conn: BackendConn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if (self.waiting or self.later) and len(self.conns) + self.opening < self.size:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    def sweep(self, now: float) -> None:
        """Fail requests that waited in the queue or at the controller too long."""
        for queue in (self.waiting, self.later):
            while queue and now - queue[0][0] > self.queue_timeout:
                queue.popleft()[3](None, False)
        for c in list(self.conns):
            if c.timed_out(now, self.timeout):
                c._fail("no answer from the controller in time")

    def close(self) -> None:
        for c in list(self.conns):
            c.close()
