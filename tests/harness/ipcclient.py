"""Helpers for tests that drive cvland's IPC socket directly, over the product's one-shot request."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvlan.client.ipc import request_once
from cvlan.wire.ipc import DesiredState, DeviceStatus


def request(path: Path, op: str, timeout: float = 10.0, **body: Any) -> dict[str, Any]:
    """Send one request line and return the answer object (ok or not)."""
    return request_once(path, op, timeout, **body)


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
