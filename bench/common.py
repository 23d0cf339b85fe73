"""Helpers shared by the benchmarks: start a controller subprocess, sample a process, percentiles."""

from __future__ import annotations

import os
import platform
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    ca_pem: str
    data_dir: Path

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def cpu_rss(self) -> tuple[float, float]:
        p = psutil.Process(self.proc.pid)
        t = p.cpu_times()
        return t.user + t.system, p.memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_controller(
    data_dir: Path, db: str = "", taskset: str | None = None, extra_env: dict[str, str] | None = None
) -> ControllerProc:
    """Start `cvlan-controller serve` and wait until it has written admin.conf and answers."""
    from cvlan.cli.http import ApiError, Client
    from cvlan.common import adminconf

    port = free_port()
    cmd = [
        str(BIN / "cvlan-controller"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    if db:
        cmd += ["--db", db]
    if taskset:
        cmd = ["taskset", "-c", taskset, *cmd]
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen(cmd, env=env)
    conf = data_dir / "admin.conf"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited with {proc.returncode}")
        if conf.exists():
            c = adminconf.load(conf)
            try:
                Client(c.server, c.token, c.ca_pem, timeout=2).call("GET", "/api/v1/whoami")
                return ControllerProc(proc, c.server, c.token, c.ca_pem, data_dir)
            except ApiError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("controller did not start in 90 s")
