"""Management API of OpenID Connect sign-in: the providers, the device sign-in `cvlan login` uses,
group-to-role mappings and the per-tenant sign-in policy (docs/AUTH.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import Field

from cvlan.controller.api.common import tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.errors import DomainError
from cvlan.controller.http.framework import Body, Call, route
from cvlan.controller.oidc import mappings, signin
from cvlan.controller.oidc.client import PROVIDERS_KEY, Providers
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import DeviceSignin, GroupRoleView, Items, ProviderView, SigninPolicy


class DeviceStartBody(Body):
    provider: str = Field(min_length=1, max_length=63)


class DevicePollBody(Body):
    handle: str = Field(min_length=1, max_length=100)


class MappingBody(Body):
    provider: str = Field(min_length=1, max_length=63)
    group: str = Field(min_length=1, max_length=255)
    """The group name exactly as the provider puts it in the groups claim."""
    role: str
    """admin, operator or auditor."""


class SigninPolicyBody(Body):
    local_passwords: bool
    """false: the tenant's members sign in only through an identity provider."""


def _providers(c: Call) -> Providers:
    return c.request.app[PROVIDERS_KEY]


@route("GET", "/api/v1/auth/providers", summary="List the identity providers", tag="auth", auth=False)
async def list_providers(c: Call) -> Items[ProviderView]:
    items: list[ProviderView] = [
        {"name": p.name, "display_name": p.cfg.label} for p in _providers(c).values()
    ]
    return {"items": items, "total": len(items)}


@route(
    "POST",
    "/api/v1/auth/device",
    summary="Start a device sign-in (cvlan login)",
    tag="auth",
    body=DeviceStartBody,
    auth=False,
    status=201,
)
async def device_start(c: Call) -> DeviceSignin:
    client = _providers(c).get_or_fail(c.body.provider)
    try:
        d = await client.start_device()
    except DomainError as e:
        await signin.record_failure(c.ctx, "device", client.name, "", e.message)
        raise
    data = {"device_code": d.device_code, "interval": d.interval}
    handle = signin.new_state()
    await signin.remember(c.ctx, handle, client.name, data, dt.timedelta(seconds=d.expires_in))
    return {
        "handle": handle,
        "user_code": d.user_code,
        "verification_uri": d.verification_uri,
        "verification_uri_complete": d.verification_uri_complete,
        "interval": d.interval,
        "expires_in": d.expires_in,
    }


@route(
    "POST",
    "/api/v1/auth/device/poll",
    summary="Finish a device sign-in once approved",
    tag="auth",
    body=DevicePollBody,
    auth=False,
)
async def device_poll(c: Call) -> Any:
    pending = await signin.peek(c.ctx, c.body.handle)
    client = _providers(c).get_or_fail(pending.provider)
    try:
        token = await client.poll_device(str(pending.data["device_code"]))
        if token is None:
            return web.json_response({"status": "pending", "interval": pending.data["interval"]}, status=202)
        await signin.take(c.ctx, c.body.handle)
        claims = await client.verify_id_token(token, None)
        user = await signin.complete(c.ctx, client, claims, "oidc-device")
    except DomainError as e:
        await signin.record_failure(c.ctx, "device", client.name, "", e.message)
        raise
    text, expires = await signin.issue_cli_token(c.ctx, user)
    return {"status": "done", "token": text, "email": user.email, "expires_at": expires}


@tenant_route("GET", "/oidc-mappings", summary="List group-to-role mappings", tag="auth")
async def list_mappings(c: Call, s: Tx, t: Tenant) -> Items[GroupRoleView]:
    items = [mappings.mapping_view(m) for m in await mappings.list_(s, c.who, t)]
    return {"items": items, "total": len(items)}


@tenant_route(
    "POST",
    "/oidc-mappings",
    summary="Map a provider group to a role",
    tag="auth",
    body=MappingBody,
    status=201,
)
async def add_mapping(c: Call, s: Tx, t: Tenant) -> GroupRoleView:
    b = c.body
    m = await mappings.add(c.ctx, s, c.who, t, set(_providers(c)), b.provider, b.group, b.role)
    return mappings.mapping_view(m)


@tenant_route("DELETE", "/oidc-mappings/{mapping}", summary="Remove a group mapping", tag="auth", status=204)
async def remove_mapping(c: Call, s: Tx, t: Tenant) -> None:
    await mappings.remove(c.ctx, s, c.who, t, c.params["mapping"])


@tenant_route(
    "PUT", "/signin-policy", summary="Allow or forbid password sign-in", tag="auth", body=SigninPolicyBody
)
async def put_signin_policy(c: Call, s: Tx, t: Tenant) -> SigninPolicy:
    await mappings.set_local_passwords(c.ctx, s, c.who, t, c.body.local_passwords)
    return {"tenant": t.name, "local_passwords": not t.local_passwords_disabled}
