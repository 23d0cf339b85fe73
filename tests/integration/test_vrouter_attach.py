"""Attaching vrouters to CVLANs over the management API: roles, audit, versions, bad input."""

from __future__ import annotations

from tests.harness.controller import RunningController
from tests.harness.seed import seed_tenant


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
