"""Facts about the local host that several components check the same way."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

__all__ = ["check_interface_name", "pid_alive", "resolve_hosts"]

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


def resolve_hosts(url_or_host: str) -> list[str]:
    """The IPv4 addresses of a URL's host, or of a host or host:port (a literal address as it is;
    [] when it does not resolve). Sorted, without duplicates."""
    host = urlsplit(url_or_host).hostname if "//" in url_or_host else url_or_host.rsplit(":", 1)[0]
    if not host:
        return []
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({str(i[4][0]) for i in infos})
