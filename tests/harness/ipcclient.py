"""A minimal blocking client of the cvland IPC socket, for tests that drive cvland directly."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvlan.wire.ipc import IPC_VERSION, DesiredState, DeviceStatus

_ids = itertools.count(1)


def request(path: Path, op: str, timeout: float = 10.0, **body: Any) -> dict[str, Any]:
    """Send one request line and return the answer object (ok or not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"v": IPC_VERSION, "id": next(_ids), "op": op, **body}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def apply(path: Path, state: DesiredState) -> dict[str, Any]:
    return request(path, "apply", state=state.model_dump())


def status(path: Path) -> DeviceStatus:
    ans = request(path, "status")
    assert ans["ok"], ans
    return DeviceStatus.model_validate(ans)


def wait_socket(path: Path, timeout: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until the daemon answers ping on path (give up early once alive() is False)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline and alive():
        try:
            if request(path, "ping", timeout=2.0).get("ok"):
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"cvland socket {path} not answering: {last}")
