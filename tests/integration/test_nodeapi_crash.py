"""SIGKILL of the controller during a burst of registrations: afterwards every node that got a success
exists exactly once with a unique address, and nothing is half-registered."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp

from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from tests.harness.controller import on_a_free_port

BURST = 1000
CONCURRENCY = 32


async def _start(data: Path, db_url: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "cvlan.controller",
        "serve",
        "--data-dir",
        str(data),
        "--db",
        db_url,
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=open(data.parent / f"ctl-{port}.log", "ab")
    )
    for _ in range(300):
        if (data / "ca.crt").exists() and (data / "admin.conf").exists():
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return proc
            except OSError:
                pass
        if proc.poll() is not None:
            log = (data.parent / f"ctl-{port}.log").read_text(errors="replace")
            raise AssertionError(f"controller exited with {proc.returncode}:\n{log[-2000:]}")
        await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("controller did not start")


class Admin:
    def __init__(self, url: str, data: Path) -> None:
        conf = (data / "admin.conf").read_text()
        self.token = next(ln.split(" = ", 1)[1] for ln in conf.splitlines() if ln.startswith("token = "))
        self.url = url
        self.ssl = ssl.create_default_context(cafile=str(data / "ca.crt"))

    async def call(self, method: str, path: str, body: object = None) -> object:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                self.url + path,
                json=body,
                ssl=self.ssl,
                headers={"Authorization": f"Bearer {self.token}"},
            ) as r,
        ):
            assert r.status < 300, await r.text()
            return await r.json()


async def test_sigkill_during_registration_burst(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, port = await on_a_free_port(lambda port: _start(data, db_url, port))
    url = f"https://127.0.0.1:{port}"
    try:
        admin = Admin(url, data)
        await admin.call("POST", "/api/v1/tenants", {"name": "acme"})
        await admin.call("POST", "/api/v1/tenants/acme/cvlans", {"name": "big", "subnet": "100.100.0.0/20"})
        tok = await admin.call("POST", "/api/v1/tenants/acme/tokens", {"cvlan": "big", "uses": BURST * 2})
        assert isinstance(tok, dict)
        token, ca = str(tok["token"]), (data / "ca.crt").read_text()
        _, csr = tls.new_key_and_csr()
        ok: dict[int, str] = {}
        failed = 0
        queue = list(range(BURST))

        async def worker() -> None:
            nonlocal failed
            c = NodeApiClient(url, ca, timeout=10)
            try:
                while queue:
                    i = queue.pop()
                    try:
                        r = await c.register(token, os.urandom(32), csr, f"n{i}")
                        assert r.node_id not in ok
                        ok[r.node_id] = r.address
                    except ControlError:
                        failed += 1
            finally:
                await c.close()

        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        for _ in range(600):
            if len(ok) >= 100:
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await asyncio.wait_for(asyncio.gather(*workers), 120)
        assert ok and failed, (len(ok), failed)
        proc = await _start(data, db_url, port)
        nodes = await admin.call("GET", "/api/v1/tenants/acme/nodes?limit=1000")
        assert isinstance(nodes, dict)
        rows = nodes["items"]
        by_id = {n["id"]: n for n in rows}
        assert len(by_id) == len(rows) == nodes["total"]
        for nid, addr in ok.items():
            assert nid in by_id, f"node {nid} got a success but does not exist"
            assert f"{by_id[nid]['address']}/32" == addr
        addrs = [n["address"] for n in rows]
        assert len(set(addrs)) == len(addrs)
        assert all(n["cert_not_after"] for n in rows), "a node without its certificate: half-registered"
        toks = await admin.call("GET", "/api/v1/tenants/acme/tokens")
        assert isinstance(toks, dict)
        assert toks["items"][0]["uses"] == len(rows), "token uses and nodes disagree"
    finally:
        proc.kill()
        proc.wait(10)
