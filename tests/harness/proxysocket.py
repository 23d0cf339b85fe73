"""A `cvlan-controller serve --proxy-socket` process for tests, and one enrolled node to speak for."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from cvlan.client import tls
from cvlan.client.controller import NodeApiClient
from cvlan.common import adminconf
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import free_port

BIN = Path(sys.executable).parent


def serve(
    data: Path,
    sock: Path,
    *extra_env: tuple[str, str],
    port: int = 0,
    metrics_port: int = 0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the controller with its proxy socket, a TLS listener on `port` and the metrics listener
    on `metrics_port` (any free ones if 0); its output to `log` (else a pipe, for short tests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")} | dict(extra_env)
    cmd = [str(BIN / "cvlan-controller"), "serve", "--data-dir", str(data)]
    cmd += ["--listen", f"127.0.0.1:{port or free_port()}", "--proxy-socket", str(sock)]
    cmd += ["--metrics-listen", f"127.0.0.1:{metrics_port or free_port()}"]
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


async def wait_ready(proc: subprocess.Popen[bytes], data: Path, sock: Path) -> adminconf.AdminConf:
    """Wait (30 s at most) for the first start's admin.conf and the socket; the admin configuration."""
    for _ in range(300):
        if proc.poll() is not None:
            out = proc.communicate()[0] or b"(its output went to its log file)"
            raise AssertionError(f"controller exited: {out.decode()[-2000:]}")
        if (data / "admin.conf").exists() and sock.exists():
            return adminconf.load(data / "admin.conf")
        await asyncio.sleep(0.1)
    raise AssertionError("controller did not start within 30 s")


async def enrol(conf: adminconf.AdminConf, hostname: str) -> tuple[str, pb.RegisterResponse]:
    """Tenant acme, CVLAN lan, a reusable token, and one node registered with it."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=conf.ssl_context())) as api:
        auth = {"Authorization": f"Bearer {conf.token}"}
        for path, body in (
            ("/api/v1/tenants", {"name": "acme"}),
            ("/api/v1/tenants/acme/cvlans", {"name": "lan"}),
        ):
            async with api.post(conf.server + path, json=body, headers=auth) as r:
                assert r.status == 201, await r.text()
        async with api.post(
            conf.server + "/api/v1/tenants/acme/tokens", json={"cvlan": "lan", "reusable": True}, headers=auth
        ) as r:
            token = str((await r.json())["token"])
    return token, await register(conf, token, hostname)


async def register(conf: adminconf.AdminConf, token: str, hostname: str) -> pb.RegisterResponse:
    _, csr = tls.new_key_and_csr()
    anon = NodeApiClient(conf.server, conf.ca_pem)
    try:
        return await anon.register(token, os.urandom(32), csr, hostname)
    finally:
        await anon.close()


async def front(
    tmp: Path, data: Path, socks: list[Path], backend_conns: int = 2
) -> tuple[subprocess.Popen[bytes], int]:
    """cvlan-front with the controller's own server certificate, one worker, `backend_conns`
    connections to each proxy socket in `socks`; its process and port once it listens (log: tmp/front.log)."""
    port = free_port()
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
            return proc, port
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("cvlan-front did not listen within 20 s")
