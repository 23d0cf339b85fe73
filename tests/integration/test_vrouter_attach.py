"""Attaching vrouters to CVLANs over the management API: roles, audit, versions, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness.controller import RunningController
from tests.harness.seed import seed_tenant

BIN = Path(sys.executable).parent


async def test_operator_attaches_and_detaches_a_vrouter(controller: RunningController) -> None:
    admin = controller.api()
    a = await seed_tenant(controller, admin, "a")
    (await admin.post("/api/v1/regions", {"name": "east"})).ok()
    vr = (
        await admin.post(
            "/api/v1/vrouters", {"name": "hub-e", "region": "east", "endpoint": "192.0.2.9:51820"}
        )
    ).ok()
    base = f"/api/v1/tenants/a/cvlans/{a.cvlan['name']}"
    version = (await admin.get(base)).ok()["version"]
    op = controller.api(a.tokens["operator"])

    res = await op.post(base + "/vrouters", {"vrouter": "hub-e"})
    assert res.status == 201, res.body
    assert res.body["vrouter"] == "hub-e" and res.body["region"] == "east" and res.body["changed"] is True
    assert res.body["registered"] is False
    assert (await admin.get(base)).ok()["version"] == version + 1, "members must get a new map"
    again = (await op.post(base + "/vrouters", {"vrouter": str(vr["id"])})).ok()
    assert again["changed"] is False
    assert (await admin.get(base)).ok()["version"] == version + 1, "attaching twice changes nothing"
    listed = (await controller.api(a.tokens["auditor"]).get(base + "/vrouters")).ok()
    assert [x["vrouter"] for x in listed["items"]] == ["hub-e"]

    audit = (await admin.get("/api/v1/tenants/a/audit")).ok()["items"]
    assert [e["action"] for e in audit if e["action"].startswith("vrouter.")] == ["vrouter.attach"]

    assert (await op.delete(base + "/vrouters/hub-e")).status == 204
    assert (await admin.get(base + "/vrouters")).ok()["items"] == []
    assert (await admin.get(base)).ok()["version"] == version + 2
    gone = await op.delete(base + "/vrouters/hub-e")
    assert gone.status == 404 and "does not serve" in gone.body["error"]["message"]


async def test_auditor_may_not_attach_and_bad_input_changes_nothing(controller: RunningController) -> None:
    admin = controller.api()
    a = await seed_tenant(controller, admin, "a")
    (await admin.post("/api/v1/regions", {"name": "east"})).ok()
    (
        await admin.post(
            "/api/v1/vrouters", {"name": "hub-e", "region": "east", "endpoint": "192.0.2.9:51820"}
        )
    ).ok()
    base = f"/api/v1/tenants/a/cvlans/{a.cvlan['name']}"
    res = await controller.api(a.tokens["auditor"]).post(base + "/vrouters", {"vrouter": "hub-e"})
    assert res.status == 403
    res = await admin.post(base + "/vrouters", {"vrouter": "nope"})
    assert res.status == 404 and res.body["error"]["message"] == "vrouter 'nope' not found"
    res = await admin.post(base + "/vrouters", {"vrouter": 7})
    assert res.status == 422
    res = await admin.post("/api/v1/tenants/a/cvlans/missing/vrouters", {"vrouter": "hub-e"})
    assert res.status == 404
    assert (await admin.get(base + "/vrouters")).ok()["items"] == []


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


async def test_cli_attach_detach_and_vrouter_command_line(
    controller: RunningController, tmp_path: Path
) -> None:
    admin = controller.api()
    await seed_tenant(controller, admin, "a")
    conf = str(controller.settings.data_dir / "admin.conf")
    cvlan = str(BIN / "cvlan")

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_run, cvlan, "--config", conf, *args)

    assert (await cli("region", "create", "east")).returncode == 0
    r = await cli("vrouter", "create", "--region", "east", "hub-e", "--endpoint", "192.0.2.9:51820")
    assert r.returncode == 0 and "cvlan-vrouter --server" in r.stdout and "--token cvvb_" in r.stdout
    r = await cli("--json", "vrouter", "attach", "--tenant", "a", "--cvlan", "a-lan", "hub-e")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["region"] == "east"
    r = await cli("vrouter", "list", "--tenant", "a", "--cvlan", "a-lan")
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:3] == ["hub-e", "east", "192.0.2.9:51820"]
    r = await cli("vrouter", "list", "--cvlan", "a-lan")
    assert r.returncode == 2 and "needs --tenant" in r.stderr
    r = await cli("vrouter", "attach", "--tenant", "a", "--cvlan", "nope", "hub-e")
    assert r.returncode == 1 and r.stderr.strip() == "cvlan: CVLAN 'nope' not found"
    r = await cli("vrouter", "attach", "--tenant", "a", "hub-e")
    assert r.returncode == 2, "--cvlan is required"
    assert (await cli("vrouter", "detach", "--tenant", "a", "--cvlan", "a-lan", "hub-e")).returncode == 0
    assert (await admin.get("/api/v1/tenants/a/cvlans/a-lan/vrouters")).ok()["items"] == []

    vr = str(BIN / "cvlan-vrouter")
    r = await asyncio.to_thread(_run, vr, "--help")
    assert r.returncode == 0 and "--state-dir" in r.stdout and "--interface" in r.stdout
    r = await asyncio.to_thread(_run, vr, "--server", "ftp://x", "--token", "t")
    assert (
        r.returncode == 2
        and r.stderr.strip()
        == "cvlan-vrouter: invalid setting server: Value error, expected an http(s):// URL"
    )
    r = await asyncio.to_thread(_run, vr, "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 1 and "no vrouter identity" in r.stderr and len(r.stderr.strip().splitlines()) == 1
