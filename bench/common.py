"""Helpers shared by the benchmarks: a controller subprocess (started with cvlan.devtools.harness),
possibly from another source tree behind its proxy socket, the machine, percentiles, a minimal
HTTP/1.1 client for the proxy socket."""

from __future__ import annotations

import asyncio
import os
import platform
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from cvlan.devtools.harness.controller import ControllerProcess, free_port, inherited_env, serve_argv
from cvlan.wire import nodeproto as wire

__all__ = [
    "BIN",
    "ControllerProc",
    "ProxyConn",
    "free_port",
    "http_request",
    "machine",
    "pct",
    "start_controller",
    "start_proxied",
    "take_response",
]

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


def http_request(path: str, body: bytes, *headers: str, ct: str = wire.CT_PROTO) -> bytes:
    """A POST as a TLS front forwards it to the proxy socket (headers: further "Name: value" lines)."""
    head = [f"POST {path} HTTP/1.1", "Host: controller", f"Content-Type: {ct}", *headers]
    return ("\r\n".join([*head, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body


class ProxyConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a controller's proxy socket, one request at a time."""

    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one whole request (http_request's); its (status, body)."""
        assert self.t is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.t.write(raw)
        return await self.waiter

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a node API message (protobuf) without a client certificate."""
        return await self.send(http_request(path, body))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        got = take_response(self.buf)
        if got is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(got)

    def close(self) -> None:
        assert self.t is not None
        self.t.close()


def start_proxied(
    data: Path,
    sock: Path,
    src: str | None,
    db: str = "",
    metrics_listen: str | None = None,
    timeout: float = 90,
) -> ControllerProcess:
    """The controller of the source tree src (None: this tree's) on CPU 1, plain HTTP behind its
    proxy socket sock, started by module so that PYTHONPATH picks the tree, without the CVLAN_*
    settings of this process. Returns once admin.conf and the socket exist."""
    run = (str(BIN / "python"), "-c", "from cvlan.controller.__main__ import main; main()")
    argv = serve_argv(
        data,
        "127.0.0.1:0",
        db=db,
        proxy_socket=sock,
        metrics_listen=metrics_listen,
        tls=False,
        log_level="warning",
        program=run,
    )
    env = inherited_env(**({"PYTHONPATH": src} if src else {}))
    process = ControllerProcess.spawn(["taskset", "-c", "1", *argv], data, env=env)
    process.wait(timeout=timeout, also=(sock,), check=None)
    return process


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
