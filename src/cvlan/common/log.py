"""Structured logging with a fixed vocabulary of fields (see docs/LOGGING.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FIELDS = (
    "tenant_id",
    "cvlan",
    "node_id",
    "peer",
    "seq",
    "capver",
    "relay_region",
    "endpoint",
    "reason",
    "drop_reason",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "actor",
)
"""The only extra fields a log record may carry. Secrets never appear in any of them."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the known fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in FIELDS:
            v = record.__dict__.get(f)
            if v is not None:
                out[f] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2026-12-06T04:17:11.042Z (sorts as text, no zone
    guessing when lines of several hosts are put side by side)."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """Human-readable lines with the known fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        t = timestamp(record.created)
        extra = " ".join(f"{f}={record.__dict__[f]}" for f in FIELDS if record.__dict__.get(f) is not None)
        line = f"{t} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def add_flags(p: argparse.ArgumentParser, *, defaults: bool = False) -> None:
    """Every program's --log-level and --log-format. Without defaults a flag not given is None, and
    the program's settings (environment, then their own defaults) decide."""
    p.add_argument(
        "--log-level",
        default="info" if defaults else None,
        help="debug, info, warning or error (default info)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else None,
        help="text, or json: one JSON object a line (default text)",
    )


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once, for a process entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "sqlalchemy.engine", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
