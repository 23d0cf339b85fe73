"""A `cvlan-controller serve --proxy-socket` process for tests, and one enrolled node to speak for."""

from __future__ import annotations

import asyncio
import os
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
    data: Path, sock: Path, *extra_env: tuple[str, str], port: int = 0, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    """Start the controller with its proxy socket, a TLS listener on `port` and the metrics listener
    on `metrics_port` (any free ones if 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")} | dict(extra_env)
    cmd = [str(BIN / "cvlan-controller"), "serve", "--data-dir", str(data)]
    cmd += ["--listen", f"127.0.0.1:{port or free_port()}", "--proxy-socket", str(sock)]
    cmd += ["--metrics-listen", f"127.0.0.1:{metrics_port or free_port()}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


async def wait_ready(proc: subprocess.Popen[bytes], data: Path, sock: Path) -> adminconf.AdminConf:
    """Wait (30 s at most) for the first start's admin.conf and the socket; the admin configuration."""
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"controller exited: {proc.communicate()[0].decode()[-2000:]}")
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
