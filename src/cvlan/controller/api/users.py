"""Management API: a tenant's users and API tokens (/api/v1/tenants/{tenant}/users, /apitokens)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import duration, tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import Body, Call, Page, page
from cvlan.controller.ops import users
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import ApiTokenCreated, ApiTokenView, UserCreated, UserView


class UserCreate(Body):
    email: str = Field(max_length=254)
    role: str
    password: str | None = Field(default=None, max_length=200)


class ApiTokenCreate(Body):
    role: str
    name: str = Field(default="", max_length=200)
    expires: str | None = Field(default=None, max_length=20)


@tenant_route(
    "POST",
    "/users",
    summary="Create a user with a role in the tenant",
    tag="users",
    body=UserCreate,
    status=201,
)
async def create_user(c: Call, s: Tx, t: Tenant) -> UserCreated:
    u, shown = await users.create_user(c.ctx, s, c.who, t, c.body.email, c.body.role, c.body.password)
    out: UserCreated = {**users.user_view(u, c.body.role), "password": shown or ""}
    if not shown:
        del out["password"]  # given by the caller: not shown back
    return out


@tenant_route("GET", "/users", summary="List the tenant's users", tag="users", paginated=True)
async def list_users(c: Call, s: Tx, t: Tenant) -> Page[UserView]:
    limit, offset = c.page
    rows, total = await users.list_users(s, c.who, t, limit, offset)
    return page([users.user_view(u, r) for u, r in rows], total, limit, offset)


@tenant_route("DELETE", "/users/{user}", summary="Remove a user from the tenant", tag="users", status=204)
async def delete_user(c: Call, s: Tx, t: Tenant) -> None:
    await users.remove_user(c.ctx, s, c.who, t, c.params["user"])


@tenant_route(
    "POST",
    "/apitokens",
    summary="Create an API token (shown once)",
    tag="apitokens",
    body=ApiTokenCreate,
    status=201,
)
async def create_apitoken(c: Call, s: Tx, t: Tenant) -> ApiTokenCreated:
    expires = duration("expires", c.body.expires)
    tok, text = await users.create_api_token(c.ctx, s, c.who, t, c.body.role, c.body.name, expires)
    return {**users.token_view(tok), "token": text}


@tenant_route("GET", "/apitokens", summary="List API tokens", tag="apitokens", paginated=True)
async def list_apitokens(c: Call, s: Tx, t: Tenant) -> Page[ApiTokenView]:
    limit, offset = c.page
    rows, total = await users.list_api_tokens(s, c.who, t, limit, offset)
    return page([users.token_view(x) for x in rows], total, limit, offset)


@tenant_route("DELETE", "/apitokens/{apitoken}", summary="Revoke an API token", tag="apitokens")
async def revoke_apitoken(c: Call, s: Tx, t: Tenant) -> ApiTokenView:
    return users.token_view(await users.revoke_api_token(c.ctx, s, c.who, t, c.params["apitoken"]))
