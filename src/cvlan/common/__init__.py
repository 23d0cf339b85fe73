"""cvlan.common."""

__all__ = [
    "adminconf",
    "backoff",
    "clock",
    "durations",
    "files",
    "framequeue",
    "host",
    "log",
    "numbers",
    "pki",
    "settings",
    "version",
]
