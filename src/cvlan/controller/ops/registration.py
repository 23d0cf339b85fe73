"""Node registration and certificate renewal: the writes of the node API.

Registration is one transaction: the token's use is counted (atomically, ops.cvlans.consume_token),
the node and its address are created (ops.nodes.create) and its certificate recorded. The answer is
sent only after commit, so a node that got a success exists exactly once, and a failure anywhere
(including a crash) leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller import credentials
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db.models import Cvlan, EnrollmentToken, Node
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import cvlans, nodes, reauth
from cvlan.controller.ops.context import OpsContext
from cvlan.wire import certid
from cvlan.wire.ids import CvlanId, NodeId, TenantId

MAX_CSR_BYTES = 8192
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Caller:
    """The certificate identity of a registering node, if it presented one."""

    node_id: NodeId
    tenant_id: TenantId
    wg_key: bytes


@dataclass(frozen=True)
class Issued:
    node: Node
    cvlan: Cvlan
    cert_pem: str
    not_after: dt.datetime


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if it parses, its signature checks and its key is ECDSA P-256 or Ed25519.

    Used for every certificate the controller signs from a request: nodes, relays and vrouters."""
    raw = csr_pem.encode()
    if not raw or len(raw) > MAX_CSR_BYTES:
        raise DomainError(
            Kind.INVALID, f"csr_pem must be a PEM CSR of at most {MAX_CSR_BYTES} bytes", {"field": "csr_pem"}
        )
    try:
        csr = x509.load_pem_x509_csr(raw)
        ok = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise DomainError(
            Kind.INVALID, "csr_pem is not a valid PEM certificate request", {"field": "csr_pem"}
        ) from e
    if not ok:
        raise DomainError(Kind.INVALID, "csr_pem signature does not verify", {"field": "csr_pem"})
    if not (
        isinstance(key, ed25519.Ed25519PublicKey)
        or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))
    ):
        raise DomainError(Kind.INVALID, "csr_pem key must be ECDSA P-256 or Ed25519", {"field": "csr_pem"})
    return csr


def _checked(wg_public_key: bytes, csr_pem: str) -> x509.CertificateSigningRequest:
    """The parsed CSR of a registration whose key and CSR are well formed; INVALID if not."""
    if len(wg_public_key) != 32:
        raise DomainError(Kind.INVALID, "wg_public_key must be 32 bytes", {"field": "wg_public_key"})
    return load_csr(csr_pem)


def clean_hostname(hostname: str) -> str:
    """A valid node name derived from a machine's hostname (first label, odd characters to '-')."""
    first = hostname.strip().split(".")[0]
    name = _BAD_NAME_CHARS.sub("-", first).strip("-._")[:55]
    if not name or name.isdigit():
        name = f"node-{name}" if name else "node"
    return name


def issue_cert(
    ctx: OpsContext,
    authority: CertificateAuthority,
    node: Node,
    csr: x509.CertificateSigningRequest,
    lifetime: dt.timedelta | None = None,
) -> tuple[str, dt.datetime]:
    """Sign the node's certificate; lifetime from nodes.cert_lifetime (default: the controller's)."""
    now = ctx.now()
    cert = authority.issue_client(
        csr,
        common_name=f"node-{node.id}",
        lifetime=lifetime or dt.timedelta(seconds=ctx.settings.node_cert_lifetime_s),
        identity={
            certid.OID_NODE_ID: str(node.id),
            certid.OID_TENANT_ID: str(node.tenant_id),
            certid.OID_CVLAN_ID: str(node.cvlan_id),
            certid.OID_WG_KEY: node.wg_public_key.hex(),
            certid.OID_KIND: "node",
        },
        now=now,
    )
    node.cert_serial = format(cert.serial_number, "x")
    node.cert_not_after = cert.not_valid_after_utc
    return cert.public_bytes(serialization.Encoding.PEM).decode(), cert.not_valid_after_utc


async def register(
    ctx: OpsContext,
    s: AsyncSession,
    authority: CertificateAuthority,
    *,
    token: str,
    wg_public_key: bytes,
    csr_pem: str,
    hostname: str,
    os_info: str,
    caller: Caller | None,
    previous_cert_pem: str = "",
    previous_key_signature: bytes = b"",
    wg_key_proof: bytes = b"",
) -> Issued:
    """Enrol a node with a token, or re-issue the certificate of the caller's own node (idempotent),
    or re-authenticate a node whose certificate expired (ops.reauth) as the same node."""
    csr = _checked(wg_public_key, csr_pem)
    if previous_cert_pem:
        node = await reauth.reauthenticate(
            ctx,
            s,
            authority,
            token=token,
            wg_public_key=wg_public_key,
            csr_pem=csr_pem,
            previous_cert_pem=previous_cert_pem,
            signature=previous_key_signature,
            wg_proof=wg_key_proof,
        )
        return await _issued(ctx, s, authority, node, csr)
    # Only a caller with a certificate can re-register; for anyone else nodes.create refuses the key.
    existing = None
    if caller is not None:
        existing = await s.scalar(select(Node).where(Node.wg_public_key == wg_public_key))
    elif token:
        retried = await _lost_answer_retry(ctx, s, token, wg_public_key)
        if retried is not None:
            c = await s.get(Cvlan, retried.cvlan_id)
            assert c is not None
            pem, not_after = issue_cert(
                ctx, authority, retried, csr, await nodes.cert_lifetime(ctx, s, retried)
            )
            return Issued(retried, c, pem, not_after)
    if existing is not None:
        if (
            caller is None
            or caller.node_id != existing.id
            or caller.wg_key != wg_public_key
            or existing.disabled
        ):
            raise DomainError(
                Kind.CONFLICT,
                "a node with this WireGuard key is already registered; use a new key or delete that node",
                {"field": "wg_public_key"},
            )
        c = await s.get(Cvlan, existing.cvlan_id)
        assert c is not None
        pem, not_after = issue_cert(
            ctx, authority, existing, csr, await nodes.cert_lifetime(ctx, s, existing)
        )
        return Issued(existing, c, pem, not_after)
    if not token:
        raise DomainError(Kind.UNAUTHENTICATED, "an enrollment token is required", {"field": "token"})
    tok = await cvlans.consume_token(ctx, s, token)
    if caller is not None and caller.tenant_id != tok.tenant_id:
        raise DomainError(
            Kind.FORBIDDEN, "this enrollment token belongs to another tenant than the calling node"
        )
    node = await nodes.create(ctx, s, tok, wg_public_key, clean_hostname(hostname), os_info)
    return await _issued(ctx, s, authority, node, csr)


async def _issued(
    ctx: OpsContext,
    s: AsyncSession,
    authority: CertificateAuthority,
    node: Node,
    csr: x509.CertificateSigningRequest,
) -> Issued:
    pem, not_after = issue_cert(ctx, authority, node, csr, await nodes.cert_lifetime(ctx, s, node))
    c = await s.get(Cvlan, node.cvlan_id)
    assert c is not None
    return Issued(node, c, pem, not_after)


@dataclass(frozen=True)
class Enrolment:
    """A registration with a token from a node without a certificate (the common one)."""

    token: str
    wg_public_key: bytes
    csr_pem: str
    hostname: str
    os_info: str
    request_id: str = ""
    """Of the request, for the node's audit record."""


async def enrol_many(
    ctx: OpsContext, s: AsyncSession, authority: CertificateAuthority, todo: list[Enrolment]
) -> list[Issued | DomainError | None]:
    """register for many nodes without a certificate in one transaction, with one query per step for
    all of them (group commit): each gets its node and certificate, or the error that refused it and
    nothing written for it. None: a node whose key is already registered or came earlier in the batch
    (a retry after a lost answer, or a conflict): run register for it alone."""
    out: list[Issued | DomainError | None] = []
    csrs: dict[int, x509.CertificateSigningRequest] = {}
    for i, e in enumerate(todo):
        try:
            csrs[i] = _checked(e.wg_public_key, e.csr_pem)
            if not e.token:
                raise DomainError(Kind.UNAUTHENTICATED, "an enrollment token is required", {"field": "token"})
        except DomainError as err:
            out.append(err)
            continue
        out.append(None)
    keys = [todo[i].wg_public_key for i in csrs]
    known = set(await s.scalars(select(Node.wg_public_key).where(Node.wg_public_key.in_(keys))))
    go = []
    for i in csrs:
        # A key already registered, or twice in this batch (a retry of a request still in flight),
        # is registered alone after the batch: as a lost-answer retry, or refused.
        if todo[i].wg_public_key not in known:
            known.add(todo[i].wg_public_key)
            go.append(i)
    toks = await cvlans.consume_tokens(ctx, s, [todo[i].token for i in go])
    new: list[tuple[int, EnrollmentToken]] = []
    refused: list[int] = []
    for i, t in zip(go, toks, strict=True):
        if isinstance(t, DomainError):
            out[i] = t
            refused.append(i)
        else:
            new.append((i, t))
    made = await nodes.create_many(
        ctx,
        s,
        [
            nodes.NewNode(
                t,
                todo[i].wg_public_key,
                clean_hostname(todo[i].hostname),
                todo[i].os_info,
                todo[i].request_id,
            )
            for i, t in new
        ],
    )
    given_back: set[str] = set()
    for (i, t), node in zip(new, made, strict=True):
        if isinstance(node, DomainError):
            cvlans.release_token(t)
            given_back.add(t.prefix)
            out[i] = node
        else:
            out[i] = await _issued(ctx, s, authority, node, csrs[i])
    # A use given back may be the one a refused node of the same token lacked: that node runs alone.
    for i in refused:
        parts = credentials.split(todo[i].token, cvlans.ENROLL_KIND)
        if parts is not None and parts[0] in given_back:
            out[i] = None
    return out


RETRY_WINDOW = dt.timedelta(minutes=10)


async def _lost_answer_retry(
    ctx: OpsContext, s: AsyncSession, token: str, wg_public_key: bytes
) -> Node | None:
    """The node this exact registration created, if its answer was lost and the node retries.

    A node that timed out waiting for its registration answer retries with the same token and key. If
    that first attempt committed, the node exists but never received its certificate. It gets one now
    (for its new CSR), without using the token again, provided the same token enrolled it less than
    RETRY_WINDOW ago, the token is not revoked, and the node has never polled."""
    parts = credentials.split(token, cvlans.ENROLL_KIND)
    if parts is None:
        return None
    node = await s.scalar(select(Node).where(Node.wg_public_key == wg_public_key).with_for_update())
    if node is None or node.last_seen is not None or node.disabled or node.token_id is None:
        return None
    tok = await s.get(EnrollmentToken, node.token_id)
    if (
        tok is None
        or tok.prefix != parts[0]
        or not credentials.check_secret(parts[1], tok.secret_hash)
        or tok.revoked_at is not None
        or ctx.now() - node.created_at > RETRY_WINDOW
    ):
        return None
    return node


async def renew(
    ctx: OpsContext, s: AsyncSession, authority: CertificateAuthority, caller: Caller, csr_pem: str
) -> tuple[str, dt.datetime]:
    """A new certificate for the calling node (its current one must still be valid)."""
    csr = load_csr(csr_pem)
    node = await s.scalar(
        select(Node).where(Node.id == caller.node_id, Node.tenant_id == caller.tenant_id).with_for_update()
    )
    if node is not None and node.disabled and node.wg_public_key == caller.wg_key:
        raise nodes.disabled_error(node.id)
    if node is None or node.wg_public_key != caller.wg_key:
        raise DomainError(
            Kind.UNAUTHENTICATED,
            f"node {caller.node_id} has been deleted; re-enrol it with a new token",
            {"reason": "revoked"},
        )
    return issue_cert(ctx, authority, node, csr, await nodes.cert_lifetime(ctx, s, node))


async def report_denied(
    ctx: OpsContext,
    s: AsyncSession,
    caller: Caller,
    cvlan_id: CvlanId,
    flows: list[tuple[str, str, str, int, int]],
) -> int:
    """Store the denied flows a node reports (src, dst, proto, dport, packets); returns how many."""
    from cvlan.controller.db.models import DeniedFlow

    now = ctx.now()
    for src, dst, proto, dport, packets in flows:
        s.add(
            DeniedFlow(
                tenant_id=caller.tenant_id,
                cvlan_id=cvlan_id,
                reporter=f"node:{caller.node_id}",
                src=src,
                dst=dst,
                proto=proto,
                dport=dport,
                packets=packets,
                first_seen=now,
                last_seen=now,
            )
        )
    return len(flows)
