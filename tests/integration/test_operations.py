"""Operating the controller: first start, configuration, database outages, metrics, OpenAPI, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cvlan.devtools.pgcluster import PgCluster
from tests.harness.controller import RunningController, free_port

BIN = Path(sys.executable).parent


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("CVLAN_",))}
    e.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=e, input=stdin)


def test_database_unavailable_at_start_exits_1(tmp_path: Path) -> None:
    r = run(
        str(BIN / "cvlan-controller"),
        "serve",
        "--data-dir",
        str(tmp_path),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--db",
        f"postgresql+asyncpg://postgres@/x?host={tmp_path}/nosock",
    )
    assert r.returncode == 1
    assert "cannot open database" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_invalid_settings_name_the_field(tmp_path: Path) -> None:
    r = run(str(BIN / "cvlan-controller"), "serve", "--data-dir", str(tmp_path), "--listen", "nonsense")
    assert r.returncode == 2 and "invalid setting listen" in r.stderr
    r = run(
        str(BIN / "cvlan-controller"),
        "serve",
        "--data-dir",
        str(tmp_path),
        env={"CVLAN_CONTROLLER_POOL_CIDR": "10.0.0.1/8"},
    )
    assert r.returncode == 2 and "pool_cidr" in r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text("cvlan_prefix = 40\n")
    r = run(str(BIN / "cvlan-controller"), "serve", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "cvlan_prefix" in r.stderr
    cfg.write_text("no_such_setting = 1\n")
    r = run(str(BIN / "cvlan-controller"), "serve", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "no_such_setting" in r.stderr
    assert not (tmp_path / "admin.conf").exists()


async def test_database_lost_during_operation_gives_503_then_recovers(tmp_path: Path) -> None:
    cluster = await asyncio.to_thread(lambda: PgCluster(fsync=False).start())
    rc = None
    try:
        url = await asyncio.to_thread(cluster.create_db, "outage")
        rc = await RunningController(tmp_path / "d", url).start()
        api = rc.api()
        (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
        await asyncio.to_thread(cluster.stop_server)
        res = await api.get("/api/v1/tenants")
        assert res.status == 503, res.body
        assert res.body["error"]["code"] == "unavailable" and res.headers["Retry-After"]
        assert (await api.get("/healthz")).status == 503
        await asyncio.to_thread(cluster.start_server)
        for _ in range(50):  # the pool reconnects on its own; no restart
            res = await api.get("/api/v1/tenants")
            if res.status == 200:
                break
            await asyncio.sleep(0.2)
        assert res.status == 200 and res.body["items"][0]["name"] == "acme"
    finally:
        if rc:
            await rc.stop()
        await asyncio.to_thread(cluster.stop)


async def test_first_start_writes_admin_conf_and_cli_uses_it(
    controller: RunningController, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conf = controller.settings.data_dir / "admin.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert f"server = {controller.url}" in text and "BEGIN CERTIFICATE" in text
    cvlan = str(BIN / "cvlan")

    def cli(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(cvlan, *args, env=env, stdin=stdin)

    r = await asyncio.to_thread(cli, "--config", str(conf), "tenant", "create", "acme")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(
        cli, "--config", str(conf), "cvlan", "create", "--tenant", "acme", "lan", "--subnet", "10.50.0.0/24"
    )
    assert r.returncode == 0 and "10.50.0.0/24" in r.stdout
    r = await asyncio.to_thread(
        cli, "--config", str(conf), "token", "create", "--tenant", "acme", "--cvlan", "lan"
    )
    assert r.returncode == 0, r.stderr
    # The complete sequence for a fresh machine; the token only on its own line, never in a command.
    lines = r.stdout.splitlines()
    token = lines[1].strip()
    assert controller.c is not None
    join = f"cvlan-ctrl join --server {controller.url} --ca-pin {controller.c.ca.fingerprint}"
    assert lines[0] == "Enrollment token for CVLAN lan (shown once; store it now):" and token.startswith(
        "cvet_"
    )
    assert lines[3:] == [
        "On the machine that should join, as root:",
        "  # 1. Install the node package (Debian 12; see docs/PACKAGING.md):",
        "  apt-get install ./cvlan-client_*.deb",
        "  # 2. Join; paste the token when asked (it stays out of ps and shell history):",
        f"  {join} --token -",
        "  #    or, with the token in a root-only file:",
        f"  {join} --token-file /root/cvlan.token",
    ]
    r = await asyncio.to_thread(cli, "--config", str(conf), "--json", "cvlan", "list", "--tenant", "acme")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["subnet"] == "10.50.0.0/24"
    r = await asyncio.to_thread(cli, "--config", str(conf), "cvlan", "list", "--tenant", "acme")
    assert r.stdout.splitlines()[0].split() == ["ID", "NAME", "SUBNET", "MODE", "NODES", "VERSION"]
    # Environment variables work, flags win over them; failures are one line and exit 1.
    ca = controller.settings.data_dir / "ca.crt"
    env = {"CVLAN_SERVER": controller.url, "CVLAN_TOKEN": "cvat_bad_bad", "CVLAN_CONFIG": str(conf)}
    r = await asyncio.to_thread(cli, "tenant", "list", env=env)
    assert r.returncode == 1 and r.stderr.strip() == "cvlan: invalid, expired or revoked API token"
    r = await asyncio.to_thread(cli, "--token", controller.admin_token, "tenant", "list", env=env)
    assert r.returncode == 0 and "acme" in r.stdout
    assert ca.exists()
    # Usage errors exit 2.
    r = await asyncio.to_thread(cli, "--config", str(conf), "cvlan", "create", "lan2")
    assert r.returncode == 2
    r = await asyncio.to_thread(cli, "tenant", "list")
    assert r.returncode == 2 and "no server or token" in r.stderr
    # A password given on stdin is used and not echoed; a generated one is shown once.
    r = await asyncio.to_thread(
        cli,
        "--config",
        str(conf),
        "user",
        "create",
        "--tenant",
        "acme",
        "--email",
        "ops@acme.example",
        "--role",
        "operator",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert r.returncode == 0 and "correct horse" not in r.stdout
    # Nothing secret reached the controller's log: neither API tokens nor enrollment tokens.
    secret = controller.admin_token.split("_", 2)[2]
    assert caplog.records and secret not in caplog.text and "cvet_" not in caplog.text


async def test_metrics_and_openapi(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "acme"})
    text = await controller.metrics()
    assert 'cvlan_http_requests_total{method="POST",route="/api/v1/tenants",status="201"}' in text
    assert "cvlan_tenants 1.0" in text and "cvlan_db_pool_size" in text
    doc = (await api.get("/api/v1/openapi.json")).ok()
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/api/v1/tenants/{tenant}/cvlans"]["post"]
    schema = doc["components"]["schemas"][
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    ]
    assert schema["additionalProperties"] is False and "name" in schema["properties"]
    listing = doc["paths"]["/api/v1/tenants/{tenant}/nodes"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"tenant", "limit", "offset", "cvlan"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_restart_keeps_everything(controller: RunningController, tmp_path: Path) -> None:
    api = controller.api()
    (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
    await controller.stop()
    rc2 = await RunningController(
        controller.settings.data_dir, controller.settings.db_url, port=controller.port
    ).start()
    try:
        assert rc2.admin_token == ""  # not bootstrapped twice
        assert (await rc2.api(controller.admin_token).get("/api/v1/tenants/acme")).ok()["name"] == "acme"
    finally:
        await rc2.stop()
