"""Management API: enrollment tokens (/api/v1/tenants/{tenant}/tokens)."""

from __future__ import annotations

from pydantic import Field

from cvlan.controller.api.common import duration, tenant_route
from cvlan.controller.db.models import Tenant
from cvlan.controller.http.framework import CA_PIN_KEY, Body, Call, Page, page
from cvlan.controller.ops import cvlans
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.views import EnrollmentTokenCreated, EnrollmentTokenView


class TokenCreate(Body):
    cvlan: str = Field(max_length=63)
    reusable: bool = False
    uses: int | None = Field(default=None, ge=1, le=cvlans.MAX_TOKEN_USES)
    expires: str | None = Field(default=None, max_length=20, description="duration such as 24h or 7d")
    tags: list[str] = Field(default_factory=list)
    ephemeral: bool = Field(
        default=False, description="nodes it enrols are removed after ephemeral_offline_s offline"
    )


@tenant_route(
    "POST",
    "/tokens",
    summary="Create an enrollment token (shown once)",
    tag="tokens",
    body=TokenCreate,
    status=201,
)
async def create_token(c: Call, s: Tx, t: Tenant) -> EnrollmentTokenCreated:
    b: TokenCreate = c.body
    expires = duration("expires", b.expires)
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
    url, pin = c.ctx.settings.url, c.request.app[CA_PIN_KEY]
    return {
        **cvlans.token_view(tok, cv.name),
        "token": text,
        "join_steps": cvlans.join_steps(url, pin),
        "join_command": cvlans.join_command(url, pin, text),
    }


@tenant_route(
    "GET", "/tokens", summary="List enrollment tokens", tag="tokens", query=("cvlan",), paginated=True
)
async def list_tokens(c: Call, s: Tx, t: Tenant) -> Page[EnrollmentTokenView]:
    limit, offset = c.page
    rows, total = await cvlans.list_tokens(s, c.who, t, c.q("cvlan"), limit, offset)
    return page([cvlans.token_view(x, n) for x, n in rows], total, limit, offset)


@tenant_route("DELETE", "/tokens/{token}", summary="Revoke an enrollment token", tag="tokens")
async def revoke_token(c: Call, s: Tx, t: Tenant) -> EnrollmentTokenView:
    return cvlans.token_view(await cvlans.revoke_token(c.ctx, s, c.who, t, c.params["token"]))
