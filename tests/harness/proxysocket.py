"""A `cvlan-controller serve --proxy-socket` process for tests, and one enrolled node to speak for
(started and enrolled with cvlan.devtools.harness)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from cvlan.common import adminconf
from cvlan.devtools.harness.controller import (
    free_port,
    inherited_env,
    on_a_free_port,
    ready_step,
    serve_argv,
    wait_ready_async,
)
from cvlan.devtools.harness.enrol import EnrolledNode, make_token
from cvlan.devtools.harness.enrol import register as _register
from cvlan.devtools.harness.inprocess import Api


def serve(
    data: Path,
    sock: Path,
    *extra_env: tuple[str, str],
    port: int = 0,
    metrics_port: int = 0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the controller with its proxy socket, a TLS listener on `port` and the metrics listener
    on `metrics_port` (any free ones if 0); its output is piped to the caller, or goes to `log` (for
    tests long or busy enough to fill a pipe nobody reads)."""
    argv = serve_argv(
        data,
        f"127.0.0.1:{port or free_port()}",
        proxy_socket=sock,
        metrics_listen=f"127.0.0.1:{metrics_port or free_port()}",
    )
    env = inherited_env(**dict(extra_env))
    if log is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


async def wait_ready(proc: subprocess.Popen[bytes], data: Path, sock: Path) -> adminconf.AdminConf:
    """Wait (30 s at most) for the first start's admin.conf and the socket; the admin configuration."""

    def exited() -> str:
        return (proc.communicate()[0] or b"(its output went to its log file)").decode()[-2000:]

    def step() -> adminconf.AdminConf | None:
        return ready_step(data, lambda: proc.poll() is None, exited, also=(sock,), check=None)

    return await wait_ready_async(step, timeout=30, interval=0.1)


async def enrol(conf: adminconf.AdminConf, hostname: str) -> tuple[str, EnrolledNode]:
    """Tenant acme, CVLAN lan, a reusable token, and one node registered with it."""
    api = Api(conf.server, conf.token, conf.ssl_context())
    try:
        token = str((await make_token(api.call, "acme", "lan", reusable=True))["token"])
    finally:
        await api.close()
    return token, await register(conf, token, hostname)


async def register(conf: adminconf.AdminConf, token: str, hostname: str) -> EnrolledNode:
    return await _register(conf.server, conf.ca_pem, token, hostname)


async def front(
    tmp: Path, data: Path, socks: list[Path], backend_conns: int = 2
) -> tuple[subprocess.Popen[bytes], int]:
    """cvlan-front with the controller's own server certificate, one worker, `backend_conns`
    connections to each proxy socket in `socks`; its process and port once it listens (its output in
    tmp/front.log)."""
    return await on_a_free_port(lambda port: _front(tmp, data, socks, backend_conns, port))


async def _front(
    tmp: Path, data: Path, socks: list[Path], backend_conns: int, port: int
) -> subprocess.Popen[bytes]:
    crt, key = next(data.rglob("server.crt")), next(data.rglob("server.key"))
    ca = next(data.rglob("ca.crt"))
    cmd = [sys.executable, "-m", "cvlan.front", "--listen", f"127.0.0.1:{port}", "--cert", str(crt)]
    cmd += ["--key", str(key), "--ca", str(ca), "--workers", "1", "--backend-conns", str(backend_conns)]
    for sock in socks:
        cmd += ["--backend", str(sock)]
    with (tmp / "front.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        assert proc.poll() is None, (tmp / "front.log").read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("cvlan-front did not listen within 20 s")
