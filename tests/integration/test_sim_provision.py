"""`cvlan-sim provision`: idempotent, resumable bulk creation over the management API."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cvlan.common import adminconf
from cvlan.sim.provision import Plan, ProvisionError, provision
from tests.harness.controller import RunningController


async def test_provision_is_idempotent_and_resumable(controller: RunningController, tmp_path: Path) -> None:
    conf = adminconf.load(controller.settings.data_dir / "admin.conf")
    plan = Plan(tenants=2, cvlans_per_tenant=3, nodes_per_cvlan=4)
    work = tmp_path / "work"

    summary, store = await provision(conf, plan, work, concurrency=4, quiet=True)
    assert summary.created["tenant"] == 2 and summary.created["cvlan"] == 6 and summary.created["token"] == 6
    assert summary.created["region"] == 1 and summary.created["vrouter"] == 1
    path = work / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(store.for_plan(plan)) == 6

    # The objects are really there, and each token is good for the CVLAN's node count.
    api = controller.api()
    cv = (await api.get("/api/v1/tenants/sim-t0002/cvlans")).ok()
    assert sorted(c["name"] for c in cv["items"]) == ["c0001", "c0002", "c0003"]
    toks = (await api.get("/api/v1/tenants/sim-t0001/tokens")).ok()["items"]
    assert len(toks) == 3 and all(t["max_uses"] == 4 for t in toks)

    # Second run: nothing new.
    again, _ = await provision(conf, plan, work, concurrency=4, quiet=True)
    assert sum(again.created.values()) == 0
    assert again.existing["tenant"] == 2 and again.existing["cvlan"] == 6 and again.existing["token"] == 6

    # Interrupted run (a token created but not saved): only the missing one is made.
    data = json.loads(path.read_text())
    del data["tokens"]["sim-t0002/c0003"]
    path.write_text(json.dumps(data))
    resumed, store = await provision(conf, plan, work, concurrency=4, quiet=True)
    assert dict(resumed.created) == {"token": 1}
    assert len(store.for_plan(plan)) == 6

    # A bigger plan adds only the difference.
    bigger = Plan(tenants=3, cvlans_per_tenant=3, nodes_per_cvlan=4)
    grown, _ = await provision(conf, bigger, work, concurrency=4, quiet=True)
    assert grown.created["tenant"] == 1 and grown.created["cvlan"] == 3 and grown.created["token"] == 3


async def test_provision_with_a_bad_token_fails_clearly_and_creates_nothing(
    controller: RunningController, tmp_path: Path
) -> None:
    good = adminconf.load(controller.settings.data_dir / "admin.conf")
    bad = adminconf.AdminConf(server=good.server, token="cvat_0000000000000000_nope", ca_pem=good.ca_pem)
    with pytest.raises(ProvisionError, match="refused the token"):
        await provision(bad, Plan(1, 1, 1), tmp_path / "w", quiet=True)
    tenants = (await controller.api().get("/api/v1/tenants")).ok()
    assert tenants["total"] == 0


def test_admin_conf_parsing() -> None:
    text = (
        "# c\nserver = https://h:1/\ntoken = cvat_a_b\nca =\n"
        "  -----BEGIN CERTIFICATE-----\n  QUJD\n  -----END CERTIFICATE-----\n"
    )
    conf = adminconf.parse(text)
    assert conf.server == "https://h:1" and conf.token == "cvat_a_b"
    assert conf.ca_pem.splitlines() == ["-----BEGIN CERTIFICATE-----", "QUJD", "-----END CERTIFICATE-----"]
    with pytest.raises(adminconf.AdminConfError, match="missing 'token"):
        adminconf.parse("server = https://h:1\n")


def test_provision_cli_refuses_bad_plan(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvlan.sim",
            "provision",
            "--tenants",
            "-3",
            "--admin-conf",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "at least 1" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "cvlan.sim", "provision", "--admin-conf", str(tmp_path / "missing.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "cannot read" in r.stderr
