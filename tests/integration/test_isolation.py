"""Tenant isolation, generated from the route table: a new endpoint cannot be forgotten."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cvlan.controller.http.framework import ROUTES, Route
from tests.harness.controller import RunningController
from tests.harness.seed import SeededTenant, seed_tenant

TENANT_ROUTES = [r for r in ROUTES if r.tenant_scoped]
BODIES: dict[str, dict[str, Any]] = {
    "create_cvlan": {"name": "intruder-lan"},
    "update_cvlan": {"name": "renamed"},
    "create_token": {"cvlan": "a-lan"},
    "update_node": {"name": "renamed"},
    "set_node_tags": {"tags": ["tag:intruder"]},
    "set_node_key_expiry": {"disabled": True},
    "set_key_expiry_policy": {"node_cert_lifetime": "1d"},
    "create_user": {"email": "intruder@b.example", "role": "admin"},
    "create_apitoken": {"role": "admin"},
    "set_policy": {"rules": []},
    "attach_vrouter": {"vrouter": "no-such-vrouter"},
    "add_mapping": {"provider": "corp", "group": "net-admins", "role": "admin"},
    "put_signin_policy": {"local_passwords": False},
    "approve_routes": {"routes": ["10.9.0.0/24"]},
    "revoke_routes": {"routes": ["10.9.0.0/24"]},
    "add_route_rule": {"kind": "route", "prefix": "10.9.0.0/16"},
    "add_dns_record": {"name": "git", "type": "A", "value": "10.1.0.7"},
    "set_dns_forwarder": {"servers": ["10.1.0.53"]},
}


def fill(path: str, victim: SeededTenant, tenant_ref: str) -> str:
    values = {
        "tenant": tenant_ref,
        "cvlan": victim.cvlan["name"],
        "node": str(victim.node["id"]),
        "token": victim.token["prefix"],
        "user": victim.user["email"],
        "apitoken": victim.apitoken["prefix"],
        "vrouter": "no-such-vrouter",
        "mapping": "1",
        "rule": "1",
        "record": "1",
        "domain": "corp.example",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def body_for(r: Route) -> Any:
    if r.body is None:
        return None
    return BODIES[r.handler.__name__]


def test_every_tenant_route_is_covered() -> None:
    """A tenant-scoped route with a body must have a body here, so the isolation test reaches it."""
    assert TENANT_ROUTES, "no tenant-scoped routes found"
    missing = [
        r.handler.__name__ for r in TENANT_ROUTES if r.body is not None and r.handler.__name__ not in BODIES
    ]
    assert not missing, f"add request bodies for {missing}"


@pytest.fixture
async def two_tenants(controller: RunningController) -> tuple[SeededTenant, SeededTenant]:
    api = controller.api()
    return await seed_tenant(controller, api, "a"), await seed_tenant(controller, api, "b")


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_other_tenant_gets_404(
    controller: RunningController, two_tenants: tuple[SeededTenant, SeededTenant], route: Route
) -> None:
    a, b = two_tenants
    admin = controller.api()
    before = (await admin.get(f"/api/v1/tenants/{a.name}/audit")).ok()["total"]
    for role in ("admin", "operator", "auditor"):
        intruder = controller.api(b.tokens[role])
        for ref in (a.name, str(a.id)):
            res = await intruder.request(route.method, fill(route.path, a, ref), json=body_for(route))
            assert res.status == 404, (
                f"{role} of b on {route.method} {route.path} with {ref}: {res.status} {res.body}"
            )
            assert res.body["error"]["code"] == "not_found"
    # Tenant b's own path with a's object names/ids: the object is not found either.
    if re.search(r"\{(cvlan|node|token|user|apitoken)\}", route.path):
        res = await controller.api(b.tokens["admin"]).request(
            route.method, fill(route.path, a, b.name), json=body_for(route)
        )
        assert res.status == 404, f"{route.method} {route.path} via b's path: {res.status} {res.body}"
    # Nothing was changed in tenant a by any of this: no new audit entries, objects intact.
    assert (await admin.get(f"/api/v1/tenants/{a.name}/audit")).ok()["total"] == before
    assert (await admin.get(f"/api/v1/tenants/{a.name}/nodes/{a.node['id']}")).ok()["name"] == a.node["name"]
    assert (await admin.get(f"/api/v1/tenants/{a.name}/cvlans/{a.cvlan['name']}")).status == 200


async def test_cross_tenant_listings_show_nothing_of_others(
    controller: RunningController, two_tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    a, b = two_tenants
    api_b = controller.api(b.tokens["admin"])
    nodes = (await api_b.get("/api/v1/nodes")).ok()
    assert {n["tenant_id"] for n in nodes["items"]} == {b.id}
    tenants = (await api_b.get("/api/v1/tenants")).ok()
    assert [t["name"] for t in tenants["items"]] == ["b"]
    audit = (await api_b.get("/api/v1/audit")).ok()
    assert audit["total"] > 0 and {e["tenant_id"] for e in audit["items"]} == {b.id}
    # The platform admin sees both.
    all_nodes = (await controller.api().get("/api/v1/nodes")).ok()
    assert {n["tenant_id"] for n in all_nodes["items"]} == {a.id, b.id}


async def test_tenant_tokens_cannot_touch_platform_objects(
    controller: RunningController, two_tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    _, b = two_tenants
    api_b = controller.api(b.tokens["admin"])
    for method, path, body in [
        ("POST", "/api/v1/tenants", {"name": "mine"}),
        ("POST", "/api/v1/regions", {"name": "eu"}),
        ("POST", "/api/v1/relays", {"name": "r1", "region": "eu", "url": "https://r1.example"}),
        ("POST", "/api/v1/vrouters", {"name": "v1", "region": "eu", "endpoint": "192.0.2.1:51820"}),
    ]:
        res = await api_b.request(method, path, json=body)
        assert res.status == 403, (path, res.status, res.body)
    # A tenant admin cannot delete its own tenant (platform operation).
    assert (await api_b.delete("/api/v1/tenants/b")).status == 403
