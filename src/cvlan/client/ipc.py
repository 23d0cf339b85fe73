"""Client side of the cvlan-ctrl <-> cvland IPC contract (cvlan.wire.ipc; docs/IPC.md).

One Unix stream socket, newline-delimited JSON, one request in flight at a time. Failures are
IpcError with .retryable: "no cvland listening" can be retried, a refusal by cvland cannot.

IpcClient is cvlan-ctrl's long-lived connection; request_once is the blocking one-shot request of
cvlancli and the tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from pathlib import Path
from typing import Any

from cvlan.wire.ipc import IPC_VERSION, MAX_LINE, DeniedReport, DesiredState, DeviceStatus

log = logging.getLogger(__name__)


class IpcError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def refused(op: str, ans: dict[str, Any]) -> str:
    """The line for a request cvland refused. cvland starts its error with the operation's name
    ("up: exit node ..."); it is said once, not twice."""
    error = str(ans.get("error") or "no reason given")
    return f"cvland refused {op}: {error.removeprefix(f'{op}: ')}"


class IpcClient:
    """A connection to cvland, opened on first use and re-opened after any failure."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._warned = False

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if not self._warned:
                log.warning(
                    f"no cvland is listening on {self.path}; will keep retrying",
                    extra={"reason": "no_cvland"},
                )
                self._warned = True
            raise IpcError(f"no cvland is listening on {self.path}", retryable=True) from e
        except PermissionError as e:
            raise IpcError(
                f"no permission to open {self.path} (is cvlan-ctrl in the socket's group?)", retryable=True
            ) from e
        if self._warned:
            log.info(f"connected to cvland on {self.path}")
            self._warned = False

    async def close(self) -> None:
        w, self._reader, self._writer = self._writer, None, None
        if w is not None:
            w.close()
            try:
                await w.wait_closed()
            except OSError:
                pass

    async def call(self, op: str, **body: Any) -> dict[str, Any]:
        """Send one request and return the answer's fields (without v/id/ok)."""
        async with self._lock:
            if self._writer is None:
                await self._connect()
            assert self._reader is not None and self._writer is not None
            rid = next(self._ids)
            try:
                self._writer.write(_request_line(rid, op, body))
                await self._writer.drain()
                raw = await asyncio.wait_for(self._reader.readline(), self.timeout)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                await self.close()
                raise IpcError(
                    f"cvland connection failed during {op}: {e or type(e).__name__}", retryable=True
                ) from e
            if not raw:
                await self.close()
                raise IpcError(f"cvland closed the connection during {op}", retryable=True)
        try:
            ans = json.loads(raw)
        except ValueError as e:
            await self.close()
            raise IpcError(f"cvland sent a line that is not JSON during {op}", retryable=True) from e
        if not isinstance(ans, dict) or ans.get("id") != rid:
            await self.close()
            raise IpcError(f"cvland answered out of order during {op}", retryable=True)
        if not ans.get("ok"):
            raise IpcError(refused(op, ans), retryable=False)
        return {k: v for k, v in ans.items() if k not in ("v", "id", "ok")}

    async def apply(self, state: DesiredState) -> int:
        ans = await self.call("apply", state=state.model_dump(mode="json"))
        return int(ans.get("applied_version", 0))

    async def status(self) -> DeviceStatus:
        return DeviceStatus.model_validate(await self.call("status"))

    async def denied(self) -> DeniedReport:
        """Flows the filter dropped since the previous call (cvland forgets them once read)."""
        return DeniedReport.model_validate(await self.call("denied"))

    async def ping(self) -> None:
        await self.call("ping")


def request_once(path: Path, op: str, timeout: float = 5.0, **body: Any) -> dict[str, Any]:
    """One blocking request on a fresh connection: the answer object, whether ok or not.

    OSError (FileNotFoundError, PermissionError, ...) when the socket cannot be reached or the
    connection fails; IpcError when the answer is not a JSON object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(_request_line(1, op, body))
        buf = b""
        while not buf.endswith(b"\n") and len(buf) <= MAX_LINE:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        ans = json.loads(buf)
    except ValueError:
        ans = None
    if not isinstance(ans, dict):
        raise IpcError(f"cvland on {path} sent no valid answer to {op}", retryable=True)
    return ans


def _request_line(rid: int, op: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"v": IPC_VERSION, "id": rid, "op": op, **body}, separators=(",", ":")).encode() + b"\n"
