"""Re-authentication: a node whose certificate expired (a laptop offline for longer than the
certificate lifetime) comes back as the same node -- same id, name and address -- by presenting its
last certificate, a signature by that certificate's key, a proof that it holds its WireGuard key, and
either a new enrollment token of its tenant or, without a token, a tenant admin's approval: the first
attempt without a token is recorded as a pending request (``node.reauth_requested``), an admin
approves or rejects it (``node.reauth_approve``, ``node.reauth_reject``), and the node's next attempt
is accepted or refused.

Every refusal is audited (``node.reauth_refused``) and every new request recorded in its own
transaction, since the registration's transaction rolls back."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import audit
from cvlan.controller.auth import Level, Principal
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db.models import Node, NodeReauthRequest, Tenant
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import cvlans, nodes
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


PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class ReauthPending(DomainError):
    """A re-authentication without a token that waits for a tenant admin: the node asks again."""

    def __init__(self, node: Node, serial: str, tenant: str) -> None:
        super().__init__(
            Kind.FORBIDDEN,
            f"the re-authentication of node {node.id} ({node.name}) waits for a tenant admin's "
            f"approval: cvlan node reauth --tenant {tenant} approve {node.name}, or the web UI's Nodes page",
            {"reason": "reauth_pending"},
        )
        self.node_id, self.tenant_id, self.node_name = node.id, node.tenant_id, node.name
        self.address, self.serial = node.address, serial


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
    how = await _with_token(ctx, s, node, token) if token else await _approved(s, node, claim.serial)
    await s.execute(delete(NodeReauthRequest).where(NodeReauthRequest.node_id == node.id))
    audit.record(
        s,
        Principal(actor=f"node:{node.name}"),
        "node.reauth",
        "node",
        node.id,
        tenant_id=node.tenant_id,
        after={**how, "address": node.address},
    )
    return node


async def _with_token(ctx: OpsContext, s: AsyncSession, node: Node, token: str) -> dict[str, str]:
    """Use the token (once, like an enrolment) if it is a valid one of the node's tenant."""
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
    return {"token": tok.prefix}


async def _approved(s: AsyncSession, node: Node, serial: str) -> dict[str, str]:
    """Go ahead if a tenant admin approved the request for this certificate; else it waits (a new
    request is recorded by record_pending) or, rejected, is refused."""
    req = await s.get(NodeReauthRequest, node.id, with_for_update=True)
    if req is None or req.cert_serial != serial or req.state == PENDING:
        tenant = await s.get(Tenant, node.tenant_id)
        raise ReauthPending(node, serial, tenant.name if tenant is not None else str(node.tenant_id))
    if req.state == REJECTED:
        raise ReauthRefused(
            Kind.FORBIDDEN,
            f"a tenant admin rejected the re-authentication of node {node.id}; "
            "re-authenticate with a new enrollment token",
            node.tenant_id,
            node.id,
        )
    return {"approved_by": req.decided_by}


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


async def record_pending(ctx: OpsContext, e: ReauthPending) -> None:
    """Record a request waiting for approval (its own transaction: the attempt's rolled back); a
    node asking again for the same certificate only refreshes its last attempt, and a decision
    taken since the attempt was checked stays (the node's next attempt finds it)."""
    now = ctx.now()
    async with ctx.tx() as s:
        req = await s.get(NodeReauthRequest, e.node_id, with_for_update=True)
        if req is not None and req.cert_serial == e.serial:
            if req.state == PENDING:
                req.last_attempt_at = now
            return
        if req is None:
            req = NodeReauthRequest(node_id=e.node_id, tenant_id=e.tenant_id)
            s.add(req)
        req.cert_serial, req.state, req.decided_by, req.decided_at = e.serial, PENDING, "", None
        req.requested_at = req.last_attempt_at = now
        audit.record(
            s,
            Principal(actor=f"node:{e.node_name}"),
            "node.reauth_requested",
            "node",
            e.node_id,
            tenant_id=e.tenant_id,
            after={"address": e.address, "cert_serial": e.serial},
        )


async def list_requests(
    s: AsyncSession, who: Principal, tenant: Tenant
) -> list[tuple[NodeReauthRequest, Node]]:
    """The tenant's re-authentication requests (pending first, then the decided ones not used yet)."""
    who.require(tenant.id, Level.READ, "list re-authentication requests")
    stmt = (
        select(NodeReauthRequest, Node)
        .join(Node, Node.id == NodeReauthRequest.node_id)
        .where(NodeReauthRequest.tenant_id == tenant.id, Node.tenant_id == tenant.id)
        .order_by(NodeReauthRequest.state != PENDING, NodeReauthRequest.requested_at, Node.id)
    )
    return [(r, n) for r, n in (await s.execute(stmt)).all()]


async def pending_for(s: AsyncSession, who: Principal, tenant: Tenant, n: Node) -> dict[str, object] | None:
    """The node's pending re-authentication request, as request_view shows it; None if it has none."""
    who.require(tenant.id, Level.READ, "show re-authentication requests")
    r = await s.get(NodeReauthRequest, n.id)
    return request_view(r, n) if r is not None and r.tenant_id == tenant.id and r.state == PENDING else None


async def decide(
    ctx: OpsContext, s: AsyncSession, who: Principal, tenant: Tenant, ref: str, approve: bool
) -> tuple[NodeReauthRequest, Node]:
    """Approve (the node's next attempt gets a certificate, same id, name and address) or reject (it
    is refused) a node's pending re-authentication request; admins only, audited."""
    who.require(
        tenant.id, Level.ADMIN, "approve re-authentication" if approve else "reject re-authentication"
    )
    n = await nodes.resolve(s, tenant.id, ref, lock=True)
    req = await s.get(NodeReauthRequest, n.id, with_for_update=True)
    if req is None or req.tenant_id != tenant.id:
        raise DomainError(Kind.NOT_FOUND, f"node {n.name!r} has not asked to re-authenticate")
    if req.state != PENDING:
        raise DomainError(
            Kind.CONFLICT, f"the re-authentication request of node {n.name!r} is already {req.state}"
        )
    req.state = APPROVED if approve else REJECTED
    req.decided_by, req.decided_at = who.actor, ctx.now()
    audit.record(
        s,
        who,
        "node.reauth_approve" if approve else "node.reauth_reject",
        "node",
        n.id,
        tenant_id=tenant.id,
        before={"state": PENDING},
        after={"state": req.state, "cert_serial": req.cert_serial},
    )
    return req, n


def request_view(r: NodeReauthRequest, n: Node) -> dict[str, object]:
    return {
        "node_id": n.id,
        "node": n.name,
        "address": n.address,
        "state": r.state,
        "requested_at": r.requested_at,
        "last_attempt_at": r.last_attempt_at,
        "decided_by": r.decided_by,
        "decided_at": r.decided_at,
    }
