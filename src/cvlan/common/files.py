"""Atomic writes of small state files with explicit permissions, and whether a Unix socket file
has a listener behind it."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write data to path so that readers see either the old or the new file, never half of one."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def socket_in_use(path: Path) -> bool:
    """Whether a process listens on the Unix socket at path (a connection is accepted within 1 s);
    False for a missing path or a socket file a dead process left behind."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
