"""Seed data for API tests: tenants with CVLANs, tokens, nodes, users and API tokens of each role."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cvlan.controller.ops import nodes
from cvlan.devtools.harness.enrol import create_node
from tests.harness.controller import Api, RunningController


@dataclass
class SeededTenant:
    name: str
    id: int
    cvlan: dict[str, Any]
    token: dict[str, Any]
    node: dict[str, Any]
    user: dict[str, Any]
    apitoken: dict[str, Any]
    tokens: dict[str, str] = field(default_factory=dict)
    """role -> API token text"""


async def enrol_node(rc: RunningController, token_text: str, hostname: str) -> dict[str, Any]:
    """Create a node the way registration does (consume the token, allocate an address)."""
    assert rc.c is not None
    ctx = rc.c.ctx
    async with ctx.tx() as s:
        return nodes.view(await create_node(ctx, s, token_text, hostname), ctx)


async def seed_tenant(rc: RunningController, api: Api, name: str) -> SeededTenant:
    t = (await api.post("/api/v1/tenants", {"name": name})).ok()
    base = f"/api/v1/tenants/{name}"
    cv = (await api.post(base + "/cvlans", {"name": f"{name}-lan"})).ok()
    tok = (await api.post(base + "/tokens", {"cvlan": cv["name"], "reusable": True, "uses": 50})).ok()
    node = await enrol_node(rc, tok["token"], f"{name}-host")
    user = (await api.post(base + "/users", {"email": f"admin@{name}.example", "role": "admin"})).ok()
    st = SeededTenant(name, t["id"], cv, tok, node, user, {})
    for role in ("admin", "operator", "auditor"):
        at = (await api.post(base + "/apitokens", {"role": role, "name": f"{role} token"})).ok()
        st.tokens[role] = at["token"]
        st.apitoken = at
    return st
