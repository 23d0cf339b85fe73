"""The controller's API for relays: bootstrap with a token, and revocation checks of node certificates.

  GET  /v1/relay/ca        the CA certificate (public; the relay checks it against its --ca-pin)
  POST /v1/relay/register  {token, csr_pem} -> relay certificate (server + client use) and the CA
  POST /v1/relay/check     mutual TLS with the relay certificate; {nodes: [...]} -> {valid: [...]}

A relay token stays valid until the relay is deleted, so a relay that lost its state dir can
register again; each registration replaces the certificate serial the controller accepts from it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlparse

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import credentials
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db.models import Node, Region, Relay
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CTX_KEY
from cvlan.controller.ops import registration
from cvlan.controller.ops.infra import RELAY_KIND
from cvlan.wire.certid import OID_KIND, extensions_of

RELAY_CERT_LIFETIME = dt.timedelta(days=90)
CHECK_BATCH_MAX = 1000
CA_KEY: web.AppKey[CertificateAuthority] = web.AppKey("infra_ca", CertificateAuthority)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterIn(_In):
    token: str = Field(max_length=200)
    csr_pem: str = Field(max_length=16384)


class NodeClaim(_In):
    node_id: int
    tenant_id: int
    cvlan_id: int
    wg_key: str = Field(min_length=64, max_length=64)
    """Hex, as in the node certificate."""


class CheckIn(_In):
    nodes: list[NodeClaim] = Field(max_length=CHECK_BATCH_MAX)


async def _body(request: web.Request, model: type[_In]) -> Any:
    raw = await request.read()
    try:
        return model.model_validate(json.loads(raw or b"{}"))
    except (ValueError, UnicodeDecodeError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        where = ".".join(str(x) for x in first["loc"]) + ": " + first["msg"] if first else str(e)
        raise DomainError(Kind.INVALID, f"invalid request body: {where}") from e


def relay_hosts(url: str) -> list[str]:
    """Names the relay certificate must carry: the host of its public URL."""
    host = urlparse(url).hostname
    if not host:
        raise DomainError(Kind.PRECONDITION, f"relay URL {url!r} has no host")
    return [host]


def issue_infra_cert(
    ca: CertificateAuthority,
    csr_pem: str,
    kind: str,
    name: str,
    lifetime: dt.timedelta,
    now: dt.datetime,
    server_hosts: list[str] | None = None,
) -> x509.Certificate:
    """The certificate of a relay or vrouter (kind), checked and signed like a node's. A relay's
    also serves its TLS listener (server_hosts)."""
    return ca.issue_client(
        registration.load_csr(csr_pem),
        common_name=f"{kind}:{name}",
        lifetime=lifetime,
        identity={OID_KIND: kind},
        now=now,
        server_hosts=server_hosts,
    )


async def _relay_for_token(s: AsyncSession, text: str) -> Relay:
    bad = DomainError(Kind.UNAUTHENTICATED, "invalid relay bootstrap token, or the relay was deleted")
    parts = credentials.split(text, RELAY_KIND)
    if parts is None:
        raise bad
    relay = await s.scalar(select(Relay).where(Relay.bootstrap_prefix == parts[0]))
    if relay is None or not credentials.check_secret(parts[1], relay.bootstrap_hash):
        raise bad
    return relay


async def ca_handler(request: web.Request) -> web.Response:
    return web.Response(text=request.app[CA_KEY].cert_pem.decode(), content_type="application/x-pem-file")


async def register_handler(request: web.Request) -> web.Response:
    body: RegisterIn = await _body(request, RegisterIn)
    ctx, ca = request.app[CTX_KEY], request.app[CA_KEY]
    async with ctx.tx() as s:
        relay = await _relay_for_token(s, body.token)
        cert = issue_infra_cert(
            ca, body.csr_pem, "relay", relay.name, RELAY_CERT_LIFETIME, ctx.now(), relay_hosts(relay.url)
        )
        relay.cert_serial = format(cert.serial_number, "x")
        relay.last_seen = ctx.now()
        region = await s.scalar(select(Region.name).where(Region.id == relay.region_id))
        out = {
            "relay_id": relay.id,
            "name": relay.name,
            "region": region or "",
            "url": relay.url,
            "stun": relay.stun,
            "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca_pem": ca.cert_pem.decode(),
        }
    return web.json_response(out)


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The client certificate the embedded TLS listener verified against the CA, if any."""
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return x509.load_der_x509_certificate(der) if der else None


async def _relay_for_cert(s: AsyncSession, request: web.Request) -> Relay:
    if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
        # A TLS front terminated the relay's TLS (it reached the proxy socket or a plain listener):
        # the relay's certificate is not here. Say so, so that the relay can tell its operator.
        raise DomainError(
            Kind.PRECONDITION,
            "relay calls must reach the controller's own TLS listener, not a TLS front",
            {"reason": "behind_front"},
        )
    cert = peer_certificate(request)
    if cert is None or extensions_of(cert).get("kind") != "relay":
        raise DomainError(Kind.UNAUTHENTICATED, "this call needs the relay's client certificate")
    relay = await s.scalar(select(Relay).where(Relay.cert_serial == format(cert.serial_number, "x")))
    if relay is None:
        raise DomainError(Kind.UNAUTHENTICATED, "relay certificate is no longer current")
    return relay


async def check_handler(request: web.Request) -> web.Response:
    """Which node certificates are still good: the node exists, is enabled, and still has that key,
    tenant and CVLAN (a node moved to another CVLAN must not keep relaying into the old one)."""
    body: CheckIn = await _body(request, CheckIn)
    ctx = request.app[CTX_KEY]
    async with ctx.tx() as s:
        relay = await _relay_for_cert(s, request)
        relay.last_seen = ctx.now()
        ids = {c.node_id for c in body.nodes}
        rows = (await s.execute(select(Node).where(Node.id.in_(ids)))).scalars().all() if ids else []
        nodes = {n.id: n for n in rows}
    valid = []
    for c in body.nodes:
        n = nodes.get(c.node_id)
        valid.append(
            n is not None
            and not n.disabled
            and n.tenant_id == c.tenant_id
            and n.cvlan_id == c.cvlan_id
            and n.wg_public_key.hex() == c.wg_key.lower()
        )
    return web.json_response({"valid": valid})


def add_routes(app: web.Application, ca: CertificateAuthority) -> None:
    """Mount the relay API on the controller application."""
    app[CA_KEY] = ca
    app.router.add_get("/v1/relay/ca", ca_handler)
    app.router.add_post("/v1/relay/register", register_handler)
    app.router.add_post("/v1/relay/check", check_handler)
