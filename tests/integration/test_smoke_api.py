"""The basic management flow works on both databases."""

from __future__ import annotations

from tests.harness.controller import RunningController


async def test_tenant_cvlan_token_flow(controller: RunningController) -> None:
    api = controller.api()
    t = (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
    assert t["name"] == "acme"
    cv = (await api.post("/api/v1/tenants/acme/cvlans", {"name": "office"})).ok()
    assert cv["subnet"].endswith("/24")
    tok = (await api.post("/api/v1/tenants/acme/tokens", {"cvlan": "office"})).ok()
    assert tok["token"].startswith("cvet_")
    assert "--ca-pin sha256:" in tok["join_command"]
    listed = (await api.get("/api/v1/tenants/acme/tokens")).ok()
    assert listed["total"] == 1 and "token" not in listed["items"][0]
