"""The controller's Prometheus metrics: on their own listener (never the public one), read from
counts kept in memory, so a scrape costs no database query."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import event

from tests.harness.controller import RunningController, free_port
from tests.harness.seed import enrol_node

LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [DIWEC] ")
"""A text log line (common/log.py), as opposed to a command's own message."""

BIN = Path(sys.executable).parent


def gauges(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(("cvlan_tenants ", "cvlan_cvlans ", "cvlan_nodes ")):
            name, value = line.split()
            out[name] = float(value)
    return out


async def test_metrics_are_not_on_the_public_listener(controller: RunningController) -> None:
    api = controller.api()
    res = await api.get("/metrics")
    assert res.status == 404 and res.body["error"]["code"] == "not_found"
    res = await controller.api(token="").get("/metrics")
    assert res.status == 404
    assert "cvlan_http_requests_total" in await controller.metrics()


async def test_counts_follow_changes_and_a_scrape_queries_nothing(controller: RunningController) -> None:
    assert controller.c is not None
    api = controller.api()
    assert gauges(await controller.metrics()) == {"cvlan_tenants": 0, "cvlan_cvlans": 0, "cvlan_nodes": 0}
    (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
    (await api.post("/api/v1/tenants", {"name": "beta"})).ok()
    (await api.post("/api/v1/tenants/acme/cvlans", {"name": "lan"})).ok()
    assert (await api.post("/api/v1/tenants", {"name": "acme"})).status == 409  # rolled back: not counted
    token = (await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "lan", "reusable": True})).ok()["token"]
    node = await enrol_node(controller, token, "n1")
    assert gauges(await controller.metrics()) == {"cvlan_tenants": 2, "cvlan_cvlans": 1, "cvlan_nodes": 1}
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        statements.append(sql)

    sync_engine = controller.c.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", seen)
    try:
        for _ in range(3):
            await controller.metrics()
    finally:
        event.remove(sync_engine, "before_cursor_execute", seen)
    assert statements == []
    assert (await api.delete(f"/api/v1/tenants/acme/nodes/{node['id']}")).status == 204
    assert (await api.delete("/api/v1/tenants/beta")).status == 204
    assert (await api.delete("/api/v1/tenants/acme")).status == 412  # not empty: nothing changes
    assert gauges(await controller.metrics()) == {"cvlan_tenants": 1, "cvlan_cvlans": 1, "cvlan_nodes": 0}


def _serve(tmp: Path, *flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")}
    cmd = [str(BIN / "cvlan-controller"), "serve", "--data-dir", str(tmp), "--listen"]
    cmd += [f"127.0.0.1:{free_port()}", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


async def _scrape(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


@pytest.mark.timeout(120)
async def test_serve_metrics_listen_flag(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path / "a", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        for _ in range(300):
            assert proc.poll() is None, proc.communicate()[1]
            try:
                status, text = await _scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("no metrics listener within 30 s")
        assert status == 200 and "cvlan_tenants 0.0" in text and "cvlan_db_pool_size" in text
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    # The address taken: one line on stderr, exit 1.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = _serve(tmp_path / "b", "--metrics-listen", f"127.0.0.1:{taken}")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    # First start of this data dir: the log may say what was made (CA, server certificate) before
    # the listener fails; the refusal itself is one line, the last.
    lines = [line for line in err.strip().splitlines() if not LOG_RECORD.match(line)]
    assert len(lines) == 1 and f"cannot listen for metrics on 127.0.0.1:{taken}" in lines[0], err
    assert err.strip().endswith(lines[0])


def test_metrics_listen_setting_is_checked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")}
    for bad in ("nonsense", "127.0.0.1:²", "127.0.0.1:65536"):
        r = subprocess.run(
            [str(BIN / "cvlan-controller"), "serve", "--data-dir", str(tmp_path), "--metrics-listen", bad],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 2 and "invalid setting metrics_listen" in r.stderr, r.stderr
    assert not (tmp_path / "admin.conf").exists()
