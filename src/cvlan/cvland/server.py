"""The IPC server: newline-delimited JSON on a Unix socket (contract in cvlan.wire.ipc, docs/IPC.md)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cvlan.common.files import socket_in_use
from cvlan.cvland.daemon import Daemon
from cvlan.wire.ipc import IPC_VERSION, MAX_LINE, DesiredState

log = logging.getLogger(__name__)
T = TypeVar("T")


class SocketInUse(Exception):
    """Another process is already answering on the socket path."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def handle_request(daemon: Daemon, line: bytes) -> dict[str, Any]:
    """Answer one request line (never raises: errors become ok=false with one line)."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ValueError("request must be a JSON object")
    except ValueError as e:
        return {"v": IPC_VERSION, "id": None, "ok": False, "error": f"bad request: {_first_line(e)}"}
    rid = req.get("id")
    head: dict[str, Any] = {"v": IPC_VERSION, "id": rid}
    v = req.get("v", IPC_VERSION)
    if not isinstance(v, int) or v > IPC_VERSION:
        return {**head, "ok": False, "error": f"unsupported ipc version {v}"}
    op = req.get("op")
    try:
        if op == "ping":
            return {**head, "ok": True}
        if op == "status":
            return {**head, "ok": True, **daemon.status().model_dump()}
        if op == "denied":
            return {**head, "ok": True, **daemon.denied().model_dump()}
        if op == "down":
            return {**head, "ok": True, **daemon.down().model_dump()}
        if op == "up":
            exit_node = req.get("exit_node")
            if exit_node is not None and not isinstance(exit_node, str):
                raise ValueError('exit_node must be a peer name or ""')
            return {**head, "ok": True, **daemon.up(exit_node).model_dump()}
        if op == "apply":
            state = DesiredState.model_validate(req.get("state"))
            return {**head, "ok": True, "applied_version": daemon.apply(state)}
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return {**head, "ok": False, "error": f"apply: invalid state field {loc}: {err['msg']}"}
    except Exception as e:
        log.warning("ipc %s failed: %s", op, _first_line(e))
        return {**head, "ok": False, "error": f"{op}: {_first_line(e)}"}
    return {**head, "ok": False, "error": f"unknown op {op!r}"}


class Serial:
    """Runs daemon work one call at a time on a single worker thread.

    Host changes are blocking (netlink, nft, UAPI) and pyroute2's synchronous API cannot run
    inside the event loop's thread; one worker also serialises applies, ticks and status reads."""

    def __init__(self) -> None:
        self._ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvland-host")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    def close(self) -> None:
        self._ex.shutdown(wait=True)


async def _serve_conn(
    daemon: Daemon, serial: Serial, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                writer.write(b'{"v": 1, "id": null, "ok": false, "error": "request line too long"}\n')
                break
            if not line:
                break
            answer = await serial.call(handle_request, daemon, line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(daemon: Daemon, serial: Serial, path: Path, group: str = "") -> asyncio.AbstractServer:
    """Listen on path with mode 0600 (0660 + group if given); a stale socket file is replaced."""
    if path.exists():
        if socket_in_use(path):
            raise SocketInUse(f"socket {path}: another cvland is answering there")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    old = os.umask(0o177)  # the socket is created 0600: no window where others can connect
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _serve_conn(daemon, serial, r, w), path=str(path), limit=MAX_LINE
        )
    finally:
        os.umask(old)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    return server
