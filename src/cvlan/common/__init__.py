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
    "metrics",
    "numbers",
    "pki",
    "settings",
    "version",
]
