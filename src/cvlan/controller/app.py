"""Build the controller's aiohttp application from settings: store, CA, routes, metrics."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from cvlan import __version__
from cvlan.common import adminconf
from cvlan.common.clock import Clock, SystemClock
from cvlan.controller import api, nodeapi  # noqa: F401  (api: the routes register themselves)
from cvlan.controller.auth import Principal
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db import engine as dbengine
from cvlan.controller.db import queries
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http import framework
from cvlan.controller.http.framework import (
    AUTH_KEY,
    CA_KEY,
    CA_PIN_KEY,
    CTX_KEY,
    MAX_BODY_KEY,
    ROUTES,
    make_handler,
    request_middleware,
)
from cvlan.controller.infraapi import relays as relayapi
from cvlan.controller.infraapi import vrouters as vrouterapi
from cvlan.controller.oidc.client import PROVIDERS_KEY, build_providers
from cvlan.controller.ops import routereview, users
from cvlan.controller.ops.context import OpsContext
from cvlan.controller.settings import ControllerSettings
from cvlan.controller.tlsserve import TlsKeeper
from cvlan.controller.web import setup as setup_web_ui

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", AsyncEngine)

G_TENANTS = Gauge("cvlan_tenants", "Tenants")
G_CVLANS = Gauge("cvlan_cvlans", "CVLANs")
G_NODES = Gauge("cvlan_nodes", "Nodes")
G_POOL = Gauge("cvlan_db_pool_checked_out", "Database connections in use")
G_POOL_SIZE = Gauge("cvlan_db_pool_size", "Database pool size")


@dataclass
class Controller:
    """The assembled controller: what tests and the serve command hold on to."""

    settings: ControllerSettings
    app: web.Application
    ctx: OpsContext
    engine: AsyncEngine
    ca: CertificateAuthority


async def authenticate(request: web.Request) -> Principal:
    """Bearer API token. (The web UI's session cookie is checked by the UI's own middleware.)"""
    ctx = request.app[CTX_KEY]
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        sess = request.get("ui_principal")
        if isinstance(sess, Principal):
            return sess
        raise DomainError(Kind.UNAUTHENTICATED, "missing API token: send 'Authorization: Bearer <token>'")
    async with ctx.tx() as s:
        return await users.principal_for_token(ctx, s, header[7:])


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(framework.openapi("CVLAN management API", __version__))


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    try:
        async with ctx.tx() as s:
            await queries.ping(s)
    except DomainError:
        return web.json_response({"status": "degraded", "db": "unavailable"}, status=503)
    return web.json_response({"status": "ok", "version": __version__})


def metrics_app(c: Controller) -> web.Application:
    """The Prometheus endpoint, served on its own listener (settings.metrics_listen), never on the
    public one. A scrape reads only what is in memory: no database query."""

    async def metrics(_: web.Request) -> web.Response:
        G_TENANTS.set(c.ctx.objects["tenants"])
        G_CVLANS.set(c.ctx.objects["cvlans"])
        G_NODES.set(c.ctx.objects["nodes"])
        pool: Any = c.engine.pool
        if hasattr(pool, "checkedout"):
            G_POOL.set(pool.checkedout())
            G_POOL_SIZE.set(pool.size())
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def build(
    settings: ControllerSettings, clock: Clock | None = None, *, migrate: bool = True
) -> Controller:
    """Open the store (migrating it), load or create the CA, and assemble the application."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = dbengine.create_engine(settings.db_url, settings.db_pool_size)
    if migrate:
        await dbengine.upgrade(settings.db_url)
    ctx = OpsContext(
        settings=settings, sessions=dbengine.session_factory(engine), clock=clock or SystemClock()
    )
    ca = CertificateAuthority.load_or_create(settings.data_dir)
    await ctx.count_objects()
    async with ctx.tx() as s:  # the controller's own address may have changed since the last start
        await routereview.review_everywhere(ctx, s)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_middleware])
    app[CTX_KEY] = ctx
    app[ENGINE_KEY] = engine
    app[CA_KEY] = ca
    app[AUTH_KEY] = authenticate
    app[PROVIDERS_KEY] = build_providers(settings.oidc_providers, ctx.clock)
    app[MAX_BODY_KEY] = settings.max_body_bytes
    app[CA_PIN_KEY] = ca.fingerprint
    for r in ROUTES:
        app.router.add_route(r.method, r.path, make_handler(r, authenticate), name=r.handler.__name__)
    app.router.add_get("/api/v1/openapi.json", openapi_handler)
    app.router.add_get("/healthz", healthz)
    relayapi.add_routes(app)
    node_api = nodeapi.install(app, ctx, ca)
    vrouterapi.install(app, node_api.mapper)
    setup_web_ui(app, engine)

    async def _cleanup(_: web.Application) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app.cleanup_ctx.append(_cleanup)
    return Controller(settings, app, ctx, engine, ca)


async def bootstrap_admin(c: Controller) -> Path | None:
    """On first start with an empty database, write DATA_DIR/admin.conf (0600) with a platform token."""
    async with c.ctx.tx() as s:
        token = await users.first_start_token(c.ctx, s)
        if token is None:
            return None
        path = c.settings.data_dir / "admin.conf"
        adminconf.write(path, c.settings.url, token, c.ca.cert_pem.decode())
    return path


def server_ssl(c: Controller) -> ssl.SSLContext:
    """TLS for the embedded listener: the CA-signed server certificate, issued or renewed if due
    (tlsserve.TlsKeeper keeps it current while the controller runs)."""
    return TlsKeeper(c.settings, c.ca, c.ctx.clock).node_ctx
