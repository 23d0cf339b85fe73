"""Management API: a CVLAN's packet-filter policy and the denied flows nodes report."""

from __future__ import annotations

from cvlan.controller.api.common import tenant_route, when
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call, Page, page
from cvlan.controller.ops import policy
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import DeniedFlowView, PolicySet, PolicyView


class PolicyBody(Body):
    """The policy document (see docs/POLICY.md); validated in full by the policy module."""

    model_config = {"extra": "allow", "strict": True}


@tenant_route("GET", "/cvlans/{cvlan}/policy", summary="Show a CVLAN's packet-filter policy", tag="policy")
async def show_policy(c: Call, s: Tx, t: Tenant) -> PolicyView:
    cv, p = await policy.get(s, c.who, t, c.params["cvlan"])
    return policy.view(cv, p)


@tenant_route(
    "PUT",
    "/cvlans/{cvlan}/policy",
    summary="Replace a CVLAN's packet-filter policy",
    tag="policy",
    body=PolicyBody,
)
async def set_policy(c: Call, s: Tx, t: Tenant) -> PolicySet:
    cv, p, changed = await policy.set_(c.ctx, s, c.who, t, c.params["cvlan"], c.body.model_dump())
    return {**policy.view(cv, p), "changed": changed}


@tenant_route(
    "DELETE",
    "/cvlans/{cvlan}/policy",
    summary="Remove a CVLAN's policy (allow all members)",
    tag="policy",
    status=204,
)
async def clear_policy(c: Call, s: Tx, t: Tenant) -> None:
    await policy.clear(c.ctx, s, c.who, t, c.params["cvlan"])


@tenant_route(
    "GET",
    "/denied",
    summary="Denied flows reported by the tenant's nodes, most packets first",
    tag="policy",
    query=("cvlan", "since"),
    paginated=True,
)
async def list_denied(c: Call, s: Tx, t: Tenant) -> Page[DeniedFlowView]:
    limit, offset = c.page
    since = when("since", c.q("since"))
    items, total = await policy.denied_flows(s, c.who, t, c.q("cvlan"), since, limit, offset)
    return page(items, total, limit, offset)
