"""Facts about the local host that several components check the same way."""

from __future__ import annotations

import os
import re

__all__ = ["check_interface_name", "pid_alive"]

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def check_interface_name(name: str) -> str:
    """name if Linux accepts it as an interface name (IFNAMSIZ, no spaces or slashes); else ValueError."""
    if not _IFNAME.fullmatch(name):
        raise ValueError("expected 1-15 characters of A-Z a-z 0-9 _ . -")
    return name


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
