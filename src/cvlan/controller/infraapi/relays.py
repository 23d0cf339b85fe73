"""The controller's API for relays: bootstrap with a token, and revocation checks of node certificates.

  GET  /v1/relay/ca        the CA certificate (public; the relay checks it against its --ca-pin)
  POST /v1/relay/register  {token, csr_pem} -> relay certificate (server + client use) and the CA
  POST /v1/relay/check     mutual TLS with the relay certificate; {nodes: [...]} -> {valid: [...]}

A relay token stays valid until the relay is deleted, so a relay that lost its state dir can
register again; each registration replaces the certificate serial the controller accepts from it.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlparse

from aiohttp import web
from pydantic import Field

from cvlan.controller.db.models import Relay
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_KEY, CTX_KEY
from cvlan.controller.infraapi.common import In, ca_handler, caller, certify, read_body
from cvlan.controller.ops import infra, nodes
from cvlan.controller.ops.context import Tx

RELAY_CERT_LIFETIME = dt.timedelta(days=90)
CHECK_BATCH_MAX = 1000


class RegisterIn(In):
    token: str = Field(max_length=200)
    csr_pem: str = Field(max_length=16384)


class NodeClaim(In):
    node_id: int
    tenant_id: int
    cvlan_id: int
    wg_key: str = Field(min_length=64, max_length=64)
    """Hex, as in the node certificate."""


class CheckIn(In):
    nodes: list[NodeClaim] = Field(max_length=CHECK_BATCH_MAX)


def relay_hosts(url: str) -> list[str]:
    """Names the relay certificate must carry: the host of its public URL."""
    host = urlparse(url).hostname
    if not host:
        raise DomainError(Kind.PRECONDITION, f"relay URL {url!r} has no host")
    return [host]


async def register_handler(request: web.Request) -> web.Response:
    body: RegisterIn = await read_body(request, RegisterIn)
    ctx, ca = request.app[CTX_KEY], request.app[CA_KEY]
    async with ctx.tx() as s:
        relay = await infra.by_token(s, Relay, body.token)
        pems = certify(ca, relay, body.csr_pem, RELAY_CERT_LIFETIME, ctx.now(), relay_hosts(relay.url))
        region = await infra.region_name(s, relay.region_id)
        out = {
            "relay_id": relay.id,
            "name": relay.name,
            "region": region,
            "url": relay.url,
            "stun": relay.stun,
            **pems,
        }
    return web.json_response(out)


async def _relay_for_cert(s: Tx, request: web.Request) -> Relay:
    if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
        # A TLS front terminated the relay's TLS (it reached the proxy socket or a plain listener):
        # the relay's certificate is not here. Say so, so that the relay can tell its operator.
        raise DomainError(
            Kind.PRECONDITION,
            "relay calls must reach the controller's own TLS listener, not a TLS front",
            {"reason": "behind_front"},
        )
    return await caller(s, request, Relay)


async def check_handler(request: web.Request) -> web.Response:
    """Which node certificates are still good: the node exists, is enabled, and still has that key,
    tenant and CVLAN (a node moved to another CVLAN must not keep relaying into the old one)."""
    body: CheckIn = await read_body(request, CheckIn)
    ctx = request.app[CTX_KEY]
    async with ctx.tx() as s:
        relay = await _relay_for_cert(s, request)
        relay.last_seen = ctx.now()
        known = await nodes.by_ids(s, {c.node_id for c in body.nodes})
    valid = []
    for c in body.nodes:
        n = known.get(c.node_id)
        valid.append(
            n is not None
            and not n.disabled
            and n.tenant_id == c.tenant_id
            and n.cvlan_id == c.cvlan_id
            and n.wg_public_key.hex() == c.wg_key.lower()
        )
    return web.json_response({"valid": valid})


def add_routes(app: web.Application) -> None:
    """Mount the relay API on the controller application."""
    app.router.add_get("/v1/relay/ca", ca_handler)
    app.router.add_post("/v1/relay/register", register_handler)
    app.router.add_post("/v1/relay/check", check_handler)
