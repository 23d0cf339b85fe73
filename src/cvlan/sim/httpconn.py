"""A lean HTTP/1.1 keep-alive client connection for the simulated fleet.

One request at a time, Content-Length bodies only (what the controller sends), callbacks instead of
coroutines: 100,000 of these fit in one process, where a full HTTP client per node would not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

Done = Callable[[int, bytes, str], None]
"""Called once per request: (HTTP status, body, error kind). status 0 and a kind on failure."""


def build_request(method: str, path: str, host: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Accept: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HttpConn(asyncio.Protocol):
    """One keep-alive connection. `request` may be called again once the previous answer arrived."""

    __slots__ = ("transport", "_buf", "_cb", "_need", "_status", "_close", "closed")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._cb: Done | None = None
        self._need = -1
        self._status = 0
        self._close = False
        self.closed = False

    @property
    def busy(self) -> bool:
        return self._cb is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def request(self, data: bytes, done: Done) -> None:
        if self.closed or self.transport is None:
            done(0, b"", "conn_closed")
            return
        if self._cb is not None:
            raise RuntimeError("HttpConn.request: a request is already in flight")
        self._cb = done
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._parse():
            pass

    def _parse(self) -> bool:
        if self._need < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[: end + 4]
            try:
                self._status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self._fail("bad_response")
                return False
            self._need, self._close = 0, False
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    self._need = int(v)
                elif k == b"connection" and v.strip().lower() == b"close":
                    self._close = True
                elif k == b"transfer-encoding":
                    self._fail("chunked_response")
                    return False
        if len(self._buf) < self._need:
            return False
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = -1
        cb, self._cb = self._cb, None
        if self._close:
            self.close()
        if cb is not None:
            cb(self._status, body, "")
        return bool(self._buf)

    def _fail(self, kind: str) -> None:
        cb, self._cb = self._cb, None
        self.close()
        if cb is not None:
            cb(0, b"", kind)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, kind: str) -> None:
        """Give up on the request in flight (a timeout) and drop the connection."""
        self._fail(kind)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        cb, self._cb = self._cb, None
        if cb is not None:
            cb(0, b"", "conn_lost")
