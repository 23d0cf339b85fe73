"""The management API (/api/v1): every route, declared once in the route table."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field

from cvlan.common.durations import parse_duration
from cvlan.controller import audit
from cvlan.controller.api.framework import CA_PIN_KEY, Body, Call, page, route
from cvlan.controller.auth import Level
from cvlan.controller.db.models import Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import cvlans, dns, infra, nodes, policy, tenants, users
from cvlan.controller.ops.context import resolve_tenant

T = "/api/v1/tenants/{tenant}"


def _duration(field: str, text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise DomainError(Kind.INVALID, f"{field}: {e}", {"field": field}) from e


async def _tenant(c: Call) -> Tenant:
    async with c.ctx.tx() as s:
        return await resolve_tenant(s, c.who, c.params["tenant"])


# --- identity -----------------------------------------------------------------------------


@route("GET", "/api/v1/whoami", summary="The caller and its roles", tag="auth")
async def whoami(c: Call) -> dict[str, Any]:
    return {
        "actor": c.who.actor,
        "platform_admin": c.who.platform_admin,
        "roles": {str(k): v.value for k, v in c.who.roles.items()},
    }


# --- tenants ------------------------------------------------------------------------------


class TenantCreate(Body):
    name: str = Field(max_length=63)
    display_name: str = Field(default="", max_length=200)


@route("POST", "/api/v1/tenants", summary="Create a tenant", tag="tenants", body=TenantCreate, status=201)
async def create_tenant(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await tenants.create(c.ctx, s, c.who, c.body.name, c.body.display_name)
    return tenants.view(t)


@route("GET", "/api/v1/tenants", summary="List tenants visible to the caller", tag="tenants", paginated=True)
async def list_tenants(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await tenants.list_(s, c.who, limit, offset)
    return page([tenants.view(t) for t in rows], total, limit, offset)


@route("GET", T, summary="Show a tenant", tag="tenants")
async def show_tenant(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        counts = await tenants.counts(s, t.id)
    return {**tenants.view(t), **counts}


@route("DELETE", T, summary="Delete an empty tenant", tag="tenants", status=204)
async def delete_tenant(c: Call) -> None:
    async with c.ctx.tx() as s:
        await tenants.delete(c.ctx, s, c.who, c.params["tenant"])


class KeyExpiryPolicy(Body):
    node_cert_lifetime: str | None = Field(
        default=None, max_length=20, description="e.g. 7d, 30d; null: the controller's default"
    )


@route(
    "PUT",
    T + "/key-expiry",
    summary="Set the tenant's key expiry policy: how long node certificates last (admin)",
    tag="tenants",
    body=KeyExpiryPolicy,
)
async def set_key_expiry_policy(c: Call) -> dict[str, Any]:
    lifetime = _duration("node_cert_lifetime", c.body.node_cert_lifetime)
    seconds = int(lifetime.total_seconds()) if lifetime is not None else None
    async with c.ctx.tx() as s:
        t = await tenants.set_cert_lifetime(c.ctx, s, c.who, c.params["tenant"], seconds)
    return tenants.view(t)


# --- CVLANs -------------------------------------------------------------------------------


class CvlanCreate(Body):
    name: str = Field(max_length=63)
    subnet: str | None = Field(default=None, max_length=43)
    mode: str = "mesh"


class CvlanUpdate(Body):
    name: str | None = Field(default=None, max_length=63)
    mode: str | None = None


@route("POST", T + "/cvlans", summary="Create a CVLAN", tag="cvlans", body=CvlanCreate, status=201)
async def create_cvlan(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        cv = await cvlans.create(c.ctx, s, c.who, t, c.body.name, c.body.subnet, c.body.mode)
    return cvlans.view(cv, 0)


@route("GET", T + "/cvlans", summary="List CVLANs", tag="cvlans", paginated=True)
async def list_cvlans(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        rows, total = await cvlans.list_(s, c.who, t, limit, offset)
    return page([cvlans.view(cv, n) for cv, n in rows], total, limit, offset)


@route("GET", T + "/cvlans/{cvlan}", summary="Show a CVLAN", tag="cvlans")
async def show_cvlan(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        cv = await cvlans.get(s, c.who, t, c.params["cvlan"])
    return cvlans.view(cv)


@route(
    "PATCH",
    T + "/cvlans/{cvlan}",
    summary="Rename a CVLAN or change its mode",
    tag="cvlans",
    body=CvlanUpdate,
)
async def update_cvlan(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        cv = await cvlans.update(c.ctx, s, c.who, t, c.params["cvlan"], c.body.name, c.body.mode)
    return cvlans.view(cv)


@route("DELETE", T + "/cvlans/{cvlan}", summary="Delete an empty CVLAN", tag="cvlans", status=204)
async def delete_cvlan(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await cvlans.delete(c.ctx, s, c.who, t, c.params["cvlan"])


# --- policy and denied flows -------------------------------------------------------------


class PolicyBody(Body):
    """The policy document (see docs/POLICY.md); validated in full by the policy module."""

    model_config = {"extra": "allow", "strict": True}


@route("GET", T + "/cvlans/{cvlan}/policy", summary="Show a CVLAN's packet-filter policy", tag="policy")
async def show_policy(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        cv, p = await policy.get(s, c.who, t, c.params["cvlan"])
    return policy.view(cv, p)


@route(
    "PUT",
    T + "/cvlans/{cvlan}/policy",
    summary="Replace a CVLAN's packet-filter policy",
    tag="policy",
    body=PolicyBody,
)
async def set_policy(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        cv, p, changed = await policy.set_(c.ctx, s, c.who, t, c.params["cvlan"], c.body.model_dump())
    return {**policy.view(cv, p), "changed": changed}


@route(
    "DELETE",
    T + "/cvlans/{cvlan}/policy",
    summary="Remove a CVLAN's policy (allow all members)",
    tag="policy",
    status=204,
)
async def clear_policy(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await policy.clear(c.ctx, s, c.who, t, c.params["cvlan"])


@route(
    "GET",
    T + "/denied",
    summary="Denied flows reported by the tenant's nodes, most packets first",
    tag="policy",
    query=("cvlan", "since"),
    paginated=True,
)
async def list_denied(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        items, total = await policy.denied_flows(
            s, c.who, t, c.q("cvlan"), _time("since", c.q("since")), limit, offset
        )
    return page(items, total, limit, offset)


# --- enrollment tokens ------------------------------------------------------------------


class TokenCreate(Body):
    cvlan: str = Field(max_length=63)
    reusable: bool = False
    uses: int | None = Field(default=None, ge=1, le=cvlans.MAX_TOKEN_USES)
    expires: str | None = Field(default=None, max_length=20, description="duration such as 24h or 7d")
    tags: list[str] = Field(default_factory=list)
    ephemeral: bool = Field(
        default=False, description="nodes it enrols are removed after ephemeral_offline_s offline"
    )


def join_command(c: Call, token_text: str) -> str:
    """The agent's own first-start command (a development checkout; the token is on its argv)."""
    url = c.ctx.settings.url
    pin = c.request.app[CA_PIN_KEY]
    return f"cvlan-ctrl --server {url} --token {token_text} --ca-pin {pin}"


def join_steps(c: Call) -> list[str]:
    """What to run, as root, on a fresh machine to put it on the CVLAN: install the node package,
    then join with the token from stdin or a root-only file (never on the command line)."""
    join = f"cvlan-ctrl join --server {c.ctx.settings.url} --ca-pin {c.request.app[CA_PIN_KEY]}"
    return [
        "# 1. Install the node package (Debian 12; see docs/PACKAGING.md):",
        "apt-get install ./cvlan-client_*.deb",
        "# 2. Join; paste the token when asked (it stays out of ps and shell history):",
        f"{join} --token -",
        "#    or, with the token in a root-only file:",
        f"{join} --token-file /root/cvlan.token",
    ]


@route(
    "POST",
    T + "/tokens",
    summary="Create an enrollment token (shown once)",
    tag="tokens",
    body=TokenCreate,
    status=201,
)
async def create_token(c: Call) -> dict[str, Any]:
    b: TokenCreate = c.body
    expires = _duration("expires", b.expires)
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        tok, cv, text = await cvlans.create_token(
            c.ctx,
            s,
            c.who,
            t,
            b.cvlan,
            reusable=b.reusable,
            max_uses=b.uses,
            expires_in=expires,
            tags=b.tags,
            ephemeral=b.ephemeral,
        )
    return {
        **cvlans.token_view(tok, cv.name),
        "token": text,
        "join_steps": join_steps(c),
        "join_command": join_command(c, text),
    }


@route("GET", T + "/tokens", summary="List enrollment tokens", tag="tokens", query=("cvlan",), paginated=True)
async def list_tokens(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        rows, total = await cvlans.list_tokens(s, c.who, t, c.q("cvlan"), limit, offset)
    return page([cvlans.token_view(x, n) for x, n in rows], total, limit, offset)


@route("DELETE", T + "/tokens/{token}", summary="Revoke an enrollment token", tag="tokens")
async def revoke_token(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        tok = await cvlans.revoke_token(c.ctx, s, c.who, t, c.params["token"])
    return cvlans.token_view(tok)


# --- nodes --------------------------------------------------------------------------------


class NodeUpdate(Body):
    name: str | None = Field(default=None, max_length=63)
    cvlan: str | None = Field(default=None, max_length=63)


@route("GET", T + "/nodes", summary="List nodes with status", tag="nodes", query=("cvlan",), paginated=True)
async def list_nodes(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        rows, total = await nodes.list_(s, c.who, t, c.q("cvlan"), limit, offset)
    return page([nodes.view(n, c.ctx, cn) for n, cn in rows], total, limit, offset)


@route(
    "GET",
    "/api/v1/nodes",
    summary="List nodes of every tenant visible to the caller",
    tag="nodes",
    paginated=True,
)
async def list_all_nodes(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await nodes.list_visible(s, c.who, limit, offset)
    return page([nodes.view(n, c.ctx, cn) for n, cn in rows], total, limit, offset)


@route("GET", T + "/nodes/{node}", summary="Show a node", tag="nodes")
async def show_node(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        n, cn = await nodes.get(s, c.who, t, c.params["node"])
        dns_name = await dns.node_dns_name(c.ctx, s, t, n, cn)
    return {**nodes.view(n, c.ctx, cn), "dns_name": dns_name}


@route(
    "PATCH",
    T + "/nodes/{node}",
    summary="Rename a node or move it to another CVLAN",
    tag="nodes",
    body=NodeUpdate,
)
async def update_node(c: Call) -> dict[str, Any]:
    if c.body.name is None and c.body.cvlan is None:
        raise DomainError(Kind.INVALID, "nothing to change: give name or cvlan")
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        ref = c.params["node"]
        if c.body.name is not None:
            ref = str((await nodes.rename(c.ctx, s, c.who, t, ref, c.body.name)).id)
        if c.body.cvlan is not None:
            await nodes.move(c.ctx, s, c.who, t, ref, c.body.cvlan)
        n, cn = await nodes.get(s, c.who, t, ref)
    return nodes.view(n, c.ctx, cn)


@route(
    "DELETE", T + "/nodes/{node}", summary="Delete a node and revoke its certificate", tag="nodes", status=204
)
async def delete_node(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await nodes.delete(c.ctx, s, c.who, t, c.params["node"])


async def _set_disabled(c: Call, disabled: bool) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        n = await nodes.set_disabled(c.ctx, s, c.who, t, c.params["node"], disabled)
        n, cn = await nodes.get(s, c.who, t, str(n.id))
    return nodes.view(n, c.ctx, cn)


@route(
    "POST",
    T + "/nodes/{node}/disable",
    summary="Disable a node: refused from its next request, dropped from its peers' maps at once",
    tag="nodes",
)
async def disable_node(c: Call) -> dict[str, Any]:
    return await _set_disabled(c, True)


@route(
    "POST",
    T + "/nodes/{node}/enable",
    summary="Enable a disabled node again, with the same id, address and name",
    tag="nodes",
)
async def enable_node(c: Call) -> dict[str, Any]:
    return await _set_disabled(c, False)


class NodeKeyExpiry(Body):
    disabled: bool


@route(
    "PUT",
    T + "/nodes/{node}/key-expiry",
    summary="Disable key expiry for a node (servers) or enable it again (admin)",
    tag="nodes",
    body=NodeKeyExpiry,
)
async def set_node_key_expiry(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        n = await nodes.set_key_expiry(c.ctx, s, c.who, t, c.params["node"], c.body.disabled)
        n, cn = await nodes.get(s, c.who, t, str(n.id))
    return nodes.view(n, c.ctx, cn)


class NodeTags(Body):
    tags: list[str] = Field(max_length=cvlans.MAX_TAGS)


@route(
    "PUT",
    T + "/nodes/{node}/tags",
    summary="Replace a node's tags (admin); the CVLAN's policy follows at once",
    tag="nodes",
    body=NodeTags,
)
async def set_node_tags(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        n = await nodes.set_tags(c.ctx, s, c.who, t, c.params["node"], c.body.tags)
        n, cn = await nodes.get(s, c.who, t, str(n.id))
    return nodes.view(n, c.ctx, cn)


# --- users and API tokens -----------------------------------------------------------------


class UserCreate(Body):
    email: str = Field(max_length=254)
    role: str
    password: str | None = Field(default=None, max_length=200)


@route(
    "POST",
    T + "/users",
    summary="Create a user with a role in the tenant",
    tag="users",
    body=UserCreate,
    status=201,
)
async def create_user(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        u, shown = await users.create_user(c.ctx, s, c.who, t, c.body.email, c.body.role, c.body.password)
    out = users.user_view(u, c.body.role)
    if shown:
        out["password"] = shown
    return out


@route("GET", T + "/users", summary="List the tenant's users", tag="users", paginated=True)
async def list_users(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        rows, total = await users.list_users(s, c.who, t, limit, offset)
    return page([users.user_view(u, r) for u, r in rows], total, limit, offset)


@route("DELETE", T + "/users/{user}", summary="Remove a user from the tenant", tag="users", status=204)
async def delete_user(c: Call) -> None:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        await users.remove_user(c.ctx, s, c.who, t, c.params["user"])


class ApiTokenCreate(Body):
    role: str
    name: str = Field(default="", max_length=200)
    expires: str | None = Field(default=None, max_length=20)


@route(
    "POST",
    T + "/apitokens",
    summary="Create an API token (shown once)",
    tag="apitokens",
    body=ApiTokenCreate,
    status=201,
)
async def create_apitoken(c: Call) -> dict[str, Any]:
    expires = _duration("expires", c.body.expires)
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        tok, text = await users.create_api_token(c.ctx, s, c.who, t, c.body.role, c.body.name, expires)
    return {**users.token_view(tok), "token": text}


@route("GET", T + "/apitokens", summary="List API tokens", tag="apitokens", paginated=True)
async def list_apitokens(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        rows, total = await users.list_api_tokens(s, c.who, t, limit, offset)
    return page([users.token_view(x) for x in rows], total, limit, offset)


@route("DELETE", T + "/apitokens/{apitoken}", summary="Revoke an API token", tag="apitokens")
async def revoke_apitoken(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        t = await resolve_tenant(s, c.who, c.params["tenant"])
        tok = await users.revoke_api_token(c.ctx, s, c.who, t, c.params["apitoken"])
    return users.token_view(tok)


# --- audit --------------------------------------------------------------------------------

AUDIT_QUERY = ("actor", "action", "since", "until")


def _time(field: str, v: str | None) -> dt.datetime | None:
    if v is None:
        return None
    try:
        return dt.datetime.now(dt.UTC) - parse_duration(v)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as e:
        raise DomainError(
            Kind.INVALID, f"{field} {v!r}: expected an ISO time or a duration such as 24h"
        ) from e


def audit_view(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "tenant_id": e.tenant_id,
        "actor": e.actor,
        "action": e.action,
        "target_type": e.target_type,
        "target_id": e.target_id,
        "before": e.before,
        "after": e.after,
        "request_id": e.request_id,
        "created_at": e.created_at,
    }


async def _audit(c: Call, tenant_ids: list[int] | None) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await audit.query(
            s,
            tenant_ids,
            actor=c.q("actor"),
            action=c.q("action"),
            since=_time("since", c.q("since")),
            until=_time("until", c.q("until")),
            limit=limit,
            offset=offset,
        )
    return page([audit_view(e) for e in rows], total, limit, offset)


@route(
    "GET",
    T + "/audit",
    summary="The tenant's audit log, newest first",
    tag="audit",
    query=AUDIT_QUERY,
    paginated=True,
)
async def tenant_audit(c: Call) -> dict[str, Any]:
    t = await _tenant(c)
    c.who.require(t.id, Level.READ, "read audit log")
    return await _audit(c, [t.id])


@route(
    "GET",
    "/api/v1/audit",
    summary="Audit log across the caller's tenants (all for a platform admin)",
    tag="audit",
    query=AUDIT_QUERY,
    paginated=True,
)
async def all_audit(c: Call) -> dict[str, Any]:
    return await _audit(c, None if c.who.platform_admin else list(c.who.roles))


# --- regions, relays, vrouters ------------------------------------------------------------


class RegionCreate(Body):
    name: str = Field(max_length=63)


class RelayCreate(Body):
    name: str = Field(max_length=63)
    region: str = Field(max_length=63)
    url: str = Field(max_length=300)
    stun: str = Field(default="", max_length=300)


class VrouterCreate(Body):
    name: str = Field(max_length=63)
    region: str = Field(max_length=63)
    endpoint: str = Field(max_length=300)


@route("POST", "/api/v1/regions", summary="Create a region", tag="infra", body=RegionCreate, status=201)
async def create_region(c: Call) -> dict[str, Any]:
    async with c.ctx.tx() as s:
        return infra.region_view(await infra.create_region(c.ctx, s, c.who, c.body.name))


@route("GET", "/api/v1/regions", summary="List regions", tag="infra", paginated=True)
async def list_regions(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await infra.list_regions(s, limit, offset)
    return page([infra.region_view(r) for r in rows], total, limit, offset)


@route("DELETE", "/api/v1/regions/{region}", summary="Delete an unused region", tag="infra", status=204)
async def delete_region(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_region(c.ctx, s, c.who, c.params["region"])


@route(
    "POST",
    "/api/v1/relays",
    summary="Register a relay (returns its start command)",
    tag="infra",
    body=RelayCreate,
    status=201,
)
async def create_relay(c: Call) -> dict[str, Any]:
    b: RelayCreate = c.body
    async with c.ctx.tx() as s:
        x, text = await infra.create_relay(c.ctx, s, c.who, b.region, b.name, b.url, b.stun)
    cmd = infra.start_command("cvlan-relay", c.ctx.settings.url, text, c.request.app[CA_PIN_KEY])
    return {**infra.relay_view(x, b.region), "token": text, "command": cmd}


@route("GET", "/api/v1/relays", summary="List relays", tag="infra", paginated=True)
async def list_relays(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await infra.list_relays(s, limit, offset)
    return page([infra.relay_view(x, n) for x, n in rows], total, limit, offset)


@route("DELETE", "/api/v1/relays/{relay}", summary="Delete a relay", tag="infra", status=204)
async def delete_relay(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_relay(c.ctx, s, c.who, c.params["relay"])


@route(
    "POST",
    "/api/v1/vrouters",
    summary="Register a vrouter (returns its start command)",
    tag="infra",
    body=VrouterCreate,
    status=201,
)
async def create_vrouter(c: Call) -> dict[str, Any]:
    b: VrouterCreate = c.body
    async with c.ctx.tx() as s:
        x, text = await infra.create_vrouter(c.ctx, s, c.who, b.region, b.name, b.endpoint)
    cmd = infra.start_command("cvlan-vrouter", c.ctx.settings.url, text, c.request.app[CA_PIN_KEY])
    return {**infra.vrouter_view(x, b.region), "token": text, "command": cmd}


@route("GET", "/api/v1/vrouters", summary="List vrouters", tag="infra", paginated=True)
async def list_vrouters(c: Call) -> dict[str, Any]:
    limit, offset = c.page
    async with c.ctx.tx() as s:
        rows, total = await infra.list_vrouters(s, limit, offset)
    return page([infra.vrouter_view(x, n) for x, n in rows], total, limit, offset)


@route("DELETE", "/api/v1/vrouters/{vrouter}", summary="Delete a vrouter", tag="infra", status=204)
async def delete_vrouter(c: Call) -> None:
    async with c.ctx.tx() as s:
        await infra.delete_vrouter(c.ctx, s, c.who, c.params["vrouter"])
