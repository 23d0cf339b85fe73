"""Roles within a tenant, and the audit trail every mutation leaves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cvlan.common.clock import FakeClock
from cvlan.controller.http.framework import ROUTES
from tests.harness.controller import RunningController
from tests.harness.seed import seed_tenant


async def test_roles(controller: RunningController) -> None:
    a = await seed_tenant(controller, controller.api(), "acme")
    base = "/api/v1/tenants/acme"
    auditor, operator, admin = (controller.api(a.tokens[r]) for r in ("auditor", "operator", "admin"))
    # Auditors read everything of their tenant but change nothing.
    assert (await auditor.get(base + "/nodes")).ok()["total"] == 1
    assert (await auditor.get(base + "/audit")).ok()["total"] > 0
    for method, path, body in [
        ("POST", base + "/cvlans", {"name": "x"}),
        ("POST", base + "/tokens", {"cvlan": "acme-lan"}),
        ("DELETE", base + f"/nodes/{a.node['id']}", None),
        ("POST", base + "/users", {"email": "z@acme.example", "role": "auditor"}),
    ]:
        res = await auditor.request(method, path, json=body)
        assert res.status == 403, (method, path, res.body)
        assert "role" in res.body["error"]["message"]
    # Operators manage CVLANs, tokens and nodes, not users or API tokens.
    assert (await operator.post(base + "/cvlans", {"name": "ops-lan"})).status == 201
    assert (await operator.post(base + "/users", {"email": "y@acme.example", "role": "admin"})).status == 403
    assert (await operator.post(base + "/apitokens", {"role": "admin"})).status == 403
    # Admins manage users and API tokens; a revoked token stops working at once.
    new = (await admin.post(base + "/apitokens", {"role": "auditor"})).ok()
    assert (await controller.api(new["token"]).get(base + "/cvlans")).status == 200
    assert (await admin.delete(base + f"/apitokens/{new['prefix']}")).ok()["revoked_at"]
    res = await controller.api(new["token"]).get(base + "/cvlans")
    assert res.status == 401 and res.body["error"]["code"] == "unauthenticated"


async def test_expired_and_bogus_tokens_are_refused(controller: RunningController) -> None:
    for bad in ("", "cvat_nope_nope", "garbage", controller.admin_token + "x"):
        res = await controller.api(bad).get("/api/v1/tenants")
        assert res.status == 401


async def test_every_mutation_is_audited_with_its_request_id(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "acme"})
    res = await api.post("/api/v1/tenants/acme/cvlans", {"name": "lan", "subnet": "10.20.0.0/24"})
    cv = res.ok()
    rid = res.headers["X-Request-Id"]
    await api.patch("/api/v1/tenants/acme/cvlans/lan", {"mode": "hub"})
    entries = (await api.get("/api/v1/tenants/acme/audit?action=cvlan.create")).ok()["items"]
    assert len(entries) == 1
    e = entries[0]
    assert e["request_id"] == rid and e["target_id"] == str(cv["id"])
    assert e["actor"].startswith("apitoken:") and e["after"]["subnet"] == "10.20.0.0/24"
    upd = (await api.get("/api/v1/tenants/acme/audit?action=cvlan.update")).ok()["items"][0]
    assert upd["before"]["mode"] == "mesh" and upd["after"]["mode"] == "hub"
    # A refused mutation leaves no audit record and no change.
    total = (await api.get("/api/v1/tenants/acme/audit")).ok()["total"]
    assert (await api.post("/api/v1/tenants/acme/cvlans", {"name": "lan"})).status == 409
    assert (await api.get("/api/v1/tenants/acme/audit")).ok()["total"] == total


async def test_audit_filters_and_paging(controller: RunningController) -> None:
    api = controller.api()
    await api.post("/api/v1/tenants", {"name": "acme"})
    for i in range(7):
        (await api.post("/api/v1/tenants/acme/cvlans", {"name": f"lan{i}"})).ok()
    p1 = (await api.get("/api/v1/tenants/acme/audit?action=cvlan.create&limit=3")).ok()
    p3 = (await api.get("/api/v1/tenants/acme/audit?action=cvlan.create&limit=3&offset=6")).ok()
    assert p1["total"] == 7 and len(p1["items"]) == 3 and len(p3["items"]) == 1
    assert p1["items"][0]["after"]["name"] == "lan6"  # newest first
    assert p3["items"][0]["after"]["name"] == "lan0"
    assert (await api.get("/api/v1/tenants/acme/audit?since=1h")).ok()["total"] == 8
    assert (await api.get("/api/v1/tenants/acme/audit?until=2000-01-01T00:00:00Z")).ok()["total"] == 0
    assert (await api.get("/api/v1/tenants/acme/audit?since=yesterday")).status == 422


def test_audit_log_cannot_be_edited() -> None:
    """There is no route that writes to or deletes from the audit log."""
    assert all(r.method == "GET" for r in ROUTES if "audit" in r.path)


async def test_api_tokens_expire(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    rc = await RunningController(tmp_path / "d", db_url, clock=clock).start()
    try:
        api = rc.api()
        (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
        tok = (await api.post("/api/v1/tenants/acme/apitokens", {"role": "auditor", "expires": "1h"})).ok()
        assert tok["expires_at"].startswith("2026-05-01T01:00")
        assert (await rc.api(tok["token"]).get("/api/v1/tenants/acme")).status == 200
        clock.advance(3601)
        res = await rc.api(tok["token"]).get("/api/v1/tenants/acme")
        assert res.status == 401 and "expired" in res.body["error"]["message"]
    finally:
        await rc.stop()


async def test_token_revocations_are_audited_once_and_unknown_ones_are_not_found(
    controller: RunningController,
) -> None:
    api = controller.api()
    base = "/api/v1/tenants/acme"
    await api.post("/api/v1/tenants", {"name": "acme"})
    await api.post(base + "/cvlans", {"name": "lan"})
    enrol = (await api.post(base + "/tokens", {"cvlan": "lan"})).ok()
    key = (await api.post(base + "/apitokens", {"role": "auditor"})).ok()
    for path, action, target in (
        (f"/tokens/{enrol['prefix']}", "token.revoke", "enrollment_token"),
        (f"/apitokens/{key['prefix']}", "apitoken.revoke", "api_token"),
    ):
        first = (await api.delete(base + path)).ok()["revoked_at"]
        assert (await api.delete(base + path)).ok()["revoked_at"] == first  # again: nothing changes
        (e,) = (await api.get(f"{base}/audit?action={action}")).ok()["items"]
        assert e["target_type"] == target and e["after"] == {"prefix": path.rsplit("/", 1)[1]}
        assert (await api.delete(base + path.rsplit("/", 1)[0] + "/nope")).status == 404
