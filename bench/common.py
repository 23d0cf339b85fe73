"""Helpers shared by the benchmarks: a controller subprocess (started with cvlan.devtools.harness),
the machine, percentiles, a minimal HTTP response reader."""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from cvlan.devtools.harness.controller import ControllerProcess, free_port, serve_argv

__all__ = ["BIN", "ControllerProc", "free_port", "machine", "pct", "start_controller", "take_response"]

BIN = Path(sys.executable).parent


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def take_response(buf: bytearray) -> tuple[int, bytes] | None:
    """The first complete HTTP/1.1 response in buf as (status, body), removed from buf; None while
    it is incomplete. For the benches' own minimal clients (Content-Length bodies only)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    i = head.lower().find(b"content-length:")
    length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return int(head[9:12]), body


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


@dataclass
class ControllerProc:
    """A controller process (cvlan.devtools.harness) with what the benches read from it."""

    process: ControllerProcess
    url: str
    token: str
    ca_pem: str
    data_dir: Path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def cpu_rss(self) -> tuple[float, float]:
        p = psutil.Process(self.proc.pid)
        t = p.cpu_times()
        return t.user + t.system, p.memory_info().rss / 2**20

    def stop(self) -> None:
        self.process.stop(grace=15)


def start_controller(
    data_dir: Path, db: str = "", taskset: str | None = None, extra_env: dict[str, str] | None = None
) -> ControllerProc:
    """Start `cvlan-controller serve` and wait until it has written admin.conf and answers."""
    argv = serve_argv(data_dir, f"127.0.0.1:{free_port()}", db=db, log_level="warning")
    if taskset:
        argv = ["taskset", "-c", taskset, *argv]
    process = ControllerProcess.spawn(argv, data_dir, env={**os.environ, **(extra_env or {})})
    conf = process.wait(timeout=90)
    return ControllerProc(process, conf.server, conf.token, conf.ca_pem, data_dir)
