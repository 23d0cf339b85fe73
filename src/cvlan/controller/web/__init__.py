"""The management web UI, served by cvlan-controller under /ui/ on the API's listener.

Server-rendered pages (Jinja2) over the same domain operations as the JSON API, a signed session
cookie, CSRF tokens on every form, and a small script that refreshes node status in place."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from cvlan.controller.http.framework import CTX_KEY
from cvlan.controller.web import (
    account,
    core,
    oidc,
    pages_admin,
    pages_dns,
    pages_health,
    pages_policy,
    pages_routes,
    pages_tenant,
    session,
)
from cvlan.controller.web.health import HealthMonitor

__all__ = ["setup"]

STATIC_DIR = Path(__file__).parent / "static"


def setup(app: web.Application, engine: AsyncEngine) -> None:
    """Mount the UI on the application: routes, static files, the session middleware and its key."""
    app[core.ENV_KEY] = core.make_env()
    app[core.HEALTH_KEY] = HealthMonitor()
    app[core.ENGINE_POOL_KEY] = engine.pool
    app.middlewares.append(core.session_middleware)
    p = core.PREFIX
    app.router.add_routes(
        [
            web.get("/", account.root),
            web.get(p, account.root),
            web.get(p + "/", account.home),
            web.get(p + "/signin", account.signin_form),
            web.post(p + "/signin", account.signin_submit),
            web.post(p + "/signout", account.signout),
            web.get(p + "/account", account.account),
            web.post(p + "/account/password", account.account_password),
            *oidc.routes(p),
            *pages_tenant.routes(p),
            *pages_admin.routes(p),
            *pages_policy.routes(p),
            *pages_dns.routes(p),
            *pages_routes.routes(p),
            *pages_health.routes(p),
        ]
    )
    app.router.add_static(p + "/static/", STATIC_DIR)

    async def _load_key(app: web.Application) -> None:
        app[core.KEY_KEY] = await session.signing_key(app[CTX_KEY])

    app.on_startup.append(_load_key)
