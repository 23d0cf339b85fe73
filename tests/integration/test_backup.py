"""Backup and restore exactly as docs/INSTALL.md section 8 says: its shell blocks are run as they stand,
against a running controller with a tenant, a CVLAN and an enrolled node; the restored controller (a
fresh data dir, and on PostgreSQL a fresh database) serves the same tenants and nodes, and the node's
certificate still verifies: it polls the restored controller without enrolling again. About 10 s."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cvlan.client.controller import NodeApiClient
from cvlan.devtools.pgcluster import PgCluster
from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token

INSTALL = Path(__file__).resolve().parents[2] / "docs" / "INSTALL.md"


def doc_block(name: str) -> str:
    """The shell block that follows <!-- name --> in docs/INSTALL.md."""
    m = re.search(rf"<!-- {re.escape(name)} -->\n```sh\n(.*?)```", INSTALL.read_text(), re.S)
    assert m is not None, f"docs/INSTALL.md has no block {name}"
    return m.group(1)


def run_block(name: str, env: dict[str, str]) -> None:
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", doc_block(name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"{name}: {r.stderr}"


def libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def state(rc: RunningController) -> tuple[object, object]:
    api = rc.api()
    tenants = [(t["id"], t["name"]) for t in (await api.get("/api/v1/tenants")).ok()["items"]]
    nodes = [
        (n["id"], n["name"], n["address"])
        for n in (await api.get("/api/v1/tenants/acme/nodes")).ok()["items"]
    ]
    return tenants, nodes


def token_of(data: Path) -> str:
    line = next(x for x in (data / "admin.conf").read_text().splitlines() if x.startswith("token = "))
    return line.split(" = ", 1)[1]


async def test_backup_and_restore_per_install_md(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    old = await RunningController(tmp_path / "data", db_url if backend == "postgresql" else "").start()
    new: RunningController | None = None
    try:
        token = await make_token(old)
        node = await enrol(old, token, "web1")
        await node.client.close()
        before = await state(old)
        assert before[1] and before[0]

        env = {"DATA": str(tmp_path / "data"), "BACKUP": str(tmp_path / "backup")}
        if backend == "postgresql":
            env["PGURL"] = libpq(db_url)
        run_block(f"backup-{backend}", env)  # while the controller runs
        await old.stop()
        assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == sorted(
            ["ca.key", "ca.crt", "admin.conf", "cvlan.db" if backend == "sqlite" else "cvlan.pgdump"]
        )

        fresh = tmp_path / "restored"
        fresh.mkdir(mode=0o700)
        env["DATA"] = str(fresh)
        restored_url = ""
        if backend == "postgresql":
            cluster: PgCluster = request.getfixturevalue("pg_cluster")
            restored_url = cluster.create_db(f"restored{os.getpid()}")
            env["PGURL"] = libpq(restored_url)
        run_block(f"restore-{backend}", env)

        new = RunningController(fresh, restored_url)
        await new.start()
        new.admin_token = token_of(fresh)  # the restored platform token
        assert await state(new) == before
        assert new.c is not None and (fresh / "ca.crt").read_bytes() == new.c.ca.cert_pem
        # The node keeps its certificate: mutual TLS to the restored controller, pinned to the same CA.
        again = NodeApiClient(new.url, node.client.ca_pem, node.reg.certificate_pem, node.key_pem)
        try:
            resp = await again.poll(0, ["192.0.2.7:51820"], None, "", long_poll_s=0)
        finally:
            await again.close()
        assert resp.map.self.name == "web1"
    finally:
        await old.stop()
        if new is not None:
            await new.stop()
