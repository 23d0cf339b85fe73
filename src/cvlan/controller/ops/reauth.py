"""Re-authentication: a node whose certificate expired (a laptop offline for longer than the
certificate lifetime) comes back as the same node -- same id, name and address -- by presenting a new
enrollment token of its tenant, its last certificate, and a signature by that certificate's key.

Every refusal is audited (``node.reauth_refused``) in its own transaction, since the registration's
transaction rolls back."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Principal
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db.models import Node
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import cvlans
from cvlan.controller.ops.context import OpsContext
from cvlan.wire.certid import extensions_of
from cvlan.wire.ids import NodeId, TenantId
from cvlan.wire.nodeproto import reauth_message, wg_key_proof


class ReauthRefused(DomainError):
    """A refused re-authentication, with what the audit entry records."""

    def __init__(self, kind: Kind, message: str, tenant_id: TenantId | None, node_id: NodeId | None) -> None:
        super().__init__(kind, message, {"reason": "reauth_refused"})
        self.tenant_id = tenant_id
        self.node_id = node_id


@dataclass(frozen=True)
class Claim:
    node_id: NodeId
    tenant_id: TenantId
    wg_key: bytes
    serial: str
    cert: x509.Certificate


def _claim(authority: CertificateAuthority, cert_pem: str) -> Claim:
    """The node a previous certificate names, if this CA issued it (its dates do not matter here)."""
    bad = ReauthRefused(
        Kind.UNAUTHENTICATED, "previous_certificate_pem is not a node certificate of this CA", None, None
    )
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode()[:8192])
        cert.verify_directly_issued_by(authority.cert)
        ident = extensions_of(cert)
        if ident.get("kind") != "node":
            raise bad
        return Claim(
            NodeId(int(ident["node_id"])),
            TenantId(int(ident["tenant_id"])),
            bytes.fromhex(ident["wg_key"]),
            format(cert.serial_number, "x"),
            cert,
        )
    except (ValueError, TypeError, KeyError, InvalidSignature) as e:
        raise bad from e


def _check_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> bool:
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


async def reauthenticate(
    ctx: OpsContext,
    s: AsyncSession,
    authority: CertificateAuthority,
    *,
    token: str,
    wg_public_key: bytes,
    csr_pem: str,
    previous_cert_pem: str,
    signature: bytes,
    wg_proof: bytes,
) -> Node:
    """The existing node, once the request proves it: the certificate is the node's last one, the
    WireGuard key is the node's, the signature checks, and the token is a valid one of its tenant."""
    claim = _claim(authority, previous_cert_pem)
    node = await s.scalar(
        select(Node).where(Node.id == claim.node_id, Node.tenant_id == claim.tenant_id).with_for_update()
    )
    if node is None:
        raise ReauthRefused(
            Kind.UNAUTHENTICATED,
            f"node {claim.node_id} no longer exists; enrol it as a new node",
            claim.tenant_id,
            claim.node_id,
        )
    if (
        node.wg_public_key != wg_public_key
        or claim.wg_key != wg_public_key
        or node.cert_serial != claim.serial
    ):
        raise ReauthRefused(
            Kind.UNAUTHENTICATED,
            "the WireGuard key or certificate is not the node's current one",
            node.tenant_id,
            node.id,
        )
    message = reauth_message(token, wg_public_key, csr_pem)
    shared = authority.reauth_key().exchange(x25519.X25519PublicKey.from_public_bytes(wg_public_key))
    if not hmac.compare_digest(wg_key_proof(shared, message), wg_proof):
        raise ReauthRefused(
            Kind.UNAUTHENTICATED,
            "wg_key_proof does not verify: the node does not hold this WireGuard key",
            node.tenant_id,
            node.id,
        )
    if not _check_signature(claim.cert, signature, message):
        raise ReauthRefused(
            Kind.UNAUTHENTICATED,
            "previous_key_signature does not verify with the previous certificate's key",
            node.tenant_id,
            node.id,
        )
    if node.disabled:
        raise ReauthRefused(
            Kind.FORBIDDEN, f"node {node.id} is disabled by an administrator", node.tenant_id, node.id
        )
    try:
        tok = await cvlans.consume_token(ctx, s, token)
    except DomainError as e:
        raise ReauthRefused(e.kind, e.message, node.tenant_id, node.id) from e
    if tok.tenant_id != node.tenant_id:
        raise ReauthRefused(
            Kind.FORBIDDEN,
            "this enrollment token belongs to another tenant than the node",
            node.tenant_id,
            node.id,
        )
    audit.record(
        s,
        Principal(actor=f"node:{node.name}"),
        "node.reauth",
        "node",
        node.id,
        tenant_id=node.tenant_id,
        after={"token": tok.prefix, "address": node.address},
    )
    return node


async def record_refusal(ctx: OpsContext, e: ReauthRefused) -> None:
    """Audit a refused re-authentication (its own transaction: the attempt's rolled back)."""
    async with ctx.tx() as s:
        audit.record(
            s,
            Principal(actor=f"node:{e.node_id}" if e.node_id else "anonymous"),
            "node.reauth_refused",
            "node",
            e.node_id or "",
            tenant_id=e.tenant_id,
            after={"error": e.message},
        )
