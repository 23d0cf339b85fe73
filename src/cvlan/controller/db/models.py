"""ORM models. Every row that belongs to a tenant carries tenant_id. Schema changes go through migrations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from cvlan.wire.ids import CvlanId, NodeId, TenantId

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


TS = UtcDateTime()
ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class CvlanRow:
    """The first columns of a row that belongs to one CVLAN of one tenant: its id, the tenant and the
    CVLAN (deleting either deletes the row). Rows that index cvlan_id or key on it declare their own.
    sort_order keeps these the table's first columns, as the migrations made them."""

    id: Mapped[int] = mapped_column(ID, primary_key=True, sort_order=-1)
    tenant_id: Mapped[TenantId] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True, sort_order=-1
    )
    cvlan_id: Mapped[CvlanId] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"), sort_order=-1)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[TenantId] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    node_cert_lifetime_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    local_passwords_disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Members of this tenant sign in only through an identity provider (docs/AUTH.md)."""
    """Key expiry policy: lifetime of the tenant's node certificates (None: the controller's setting)."""
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Raised to end every web session of the user at once (a role lost at an OIDC sign-in)."""
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(20))
    via_oidc: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Granted by a group mapping at an OIDC sign-in (and taken back at the next one without it)."""
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_by: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS)
    expires_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    """A user's own token (issued by `cvlan login`): it carries the user's roles of the moment."""


class OidcIdentity(Base):
    """A user's account at an identity provider: (issuer, subject) is the stable key."""

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(63))
    issuer: Mapped[str] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(255))
    groups: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(TS)
    last_signin_at: Mapped[dt.datetime] = mapped_column(TS)


class OidcGroupRole(Base):
    """In a tenant, members of an identity provider's group get a role."""

    __tablename__ = "oidc_group_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "provider", "group_name"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(63))
    group_name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class OidcPending(Base):
    """A sign-in under way: the state (hashed), the nonce and PKCE verifier it must match. Deleted
    when used, so a replayed callback finds nothing."""

    __tablename__ = "oidc_pending"
    state_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    provider: Mapped[str] = mapped_column(String(63))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[dt.datetime] = mapped_column(TS, index=True)


class Cvlan(Base):
    __tablename__ = "cvlans"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[CvlanId] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    subnet: Mapped[str] = mapped_column(String(43))
    net_start: Mapped[int] = mapped_column(BigInteger, index=True)
    net_end: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(10), default="mesh")
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class IpAllocation(CvlanRow, Base):
    """One address of a CVLAN, held by a node or quarantined after release."""

    __tablename__ = "ip_allocations"
    __table_args__ = (UniqueConstraint("cvlan_id", "address"),)
    address: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(100), default="")
    allocated_at: Mapped[dt.datetime] = mapped_column(TS)
    released_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    cvlan_id: Mapped[CvlanId] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    reusable: Mapped[bool] = mapped_column(Boolean, default=False)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Nodes it enrols are removed after being offline for ephemeral_offline_s (CI runners, containers)."""
    created_by: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS)
    expires_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)


class Node(CvlanRow, Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), Index("ix_nodes_cvlan", "cvlan_id"))
    id: Mapped[NodeId] = mapped_column(ID, primary_key=True, sort_order=-1)
    name: Mapped[str] = mapped_column(String(63))
    wg_public_key: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    address: Mapped[str] = mapped_column(String(43))
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    key_expiry_disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cert_serial: Mapped[str] = mapped_column(String(64), default="")
    cert_not_after: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    endpoints: Mapped[list[Any]] = mapped_column(JSON, default=list)
    home_relay_region: Mapped[str] = mapped_column(String(63), default="")
    map_version: Mapped[int] = mapped_column(BigInteger, default=0)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    os_info: Mapped[str] = mapped_column(String(200), default="")
    token_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(TS)
    last_seen: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)


class NodeReauthRequest(Base):
    """A node whose certificate expired asks to re-authenticate without a token (it proved it holds
    its keys); a tenant admin approves or rejects it. One a node, for the certificate it presented."""

    __tablename__ = "node_reauth_requests"
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    cert_serial: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    """pending, approved or rejected."""
    requested_at: Mapped[dt.datetime] = mapped_column(TS)
    last_attempt_at: Mapped[dt.datetime] = mapped_column(TS)
    decided_by: Mapped[str] = mapped_column(String(300), default="")
    decided_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)


class Region(Base):
    __tablename__ = "regions"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class Relay(Base):
    __tablename__ = "relays"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    url: Mapped[str] = mapped_column(String(300))
    stun: Mapped[str] = mapped_column(String(300), default="")
    bootstrap_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    bootstrap_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    cert_serial: Mapped[str] = mapped_column(String(64), default="")
    last_seen: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class Vrouter(Base):
    __tablename__ = "vrouters"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    endpoint: Mapped[str] = mapped_column(String(300))
    wg_public_key: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    bootstrap_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    bootstrap_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    cert_serial: Mapped[str] = mapped_column(String(64), default="")
    last_seen: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class VrouterCvlan(Base):
    """A vrouter serving a CVLAN (hub-and-spoke and cross-region)."""

    __tablename__ = "vrouter_cvlans"
    vrouter_id: Mapped[int] = mapped_column(ForeignKey("vrouters.id", ondelete="CASCADE"), primary_key=True)
    cvlan_id: Mapped[CvlanId] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class Policy(Base):
    __tablename__ = "policies"
    cvlan_id: Mapped[CvlanId] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(TS)


class AuditEntry(Base):
    """Append-only: there is no code path that updates or deletes these rows."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_tenant_time", "tenant_id", "created_at"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str] = mapped_column(String(50))
    target_id: Mapped[str] = mapped_column(String(100))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS, index=True)


class DeniedFlow(Base):
    """Aggregated denied packets reported by nodes and vrouters."""

    __tablename__ = "denied_flows"
    __table_args__ = (Index("ix_denied_tenant_time", "tenant_id", "last_seen"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[TenantId] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    cvlan_id: Mapped[CvlanId] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"))
    reporter: Mapped[str] = mapped_column(String(100))
    src: Mapped[str] = mapped_column(String(45))
    dst: Mapped[str] = mapped_column(String(45))
    proto: Mapped[str] = mapped_column(String(10))
    dport: Mapped[int] = mapped_column(Integer, default=0)
    packets: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[dt.datetime] = mapped_column(TS)
    last_seen: Mapped[dt.datetime] = mapped_column(TS)


class HealthEvent(Base):
    """A pair's degradation or recovery (docs/HEALTH.md); kept 24 h, at most HEALTH_EVENTS_PER_CVLAN."""

    __tablename__ = "health_events"
    __table_args__ = (
        Index("ix_health_events_tenant_time", "tenant_id", "at"),
        Index("ix_health_events_cvlan_time", "cvlan_id", "at"),
        Index("ix_health_events_time", "at"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    cvlan_id: Mapped[int] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(TS)
    kind: Mapped[str] = mapped_column(String(20))
    node_id: Mapped[int] = mapped_column(ID)
    """The reporter (relay_fallback, loss) or the node no peer reaches (unreachable); no foreign key:
    the event outlives a deleted node."""
    peer_id: Mapped[int] = mapped_column(ID)
    """The peer of the pair; 0 for unreachable and reachable."""
    detail: Mapped[str] = mapped_column(String(100))


class HealthSample(Base):
    """A CVLAN's pairs per state and median round trip at one moment: at most one a minute, 24 h."""

    __tablename__ = "health_samples"
    __table_args__ = (
        Index("ix_health_samples_cvlan_time", "cvlan_id", "at"),
        Index("ix_health_samples_time", "at"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    cvlan_id: Mapped[int] = mapped_column(ForeignKey("cvlans.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(TS)
    down: Mapped[int] = mapped_column(Integer)
    lossy: Mapped[int] = mapped_column(Integer)
    relay: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    unknown: Mapped[int] = mapped_column(Integer)
    median_rtt_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class KeyValue(Base):
    """Controller-wide settings that must survive restarts (schema-level singletons)."""

    __tablename__ = "controller_kv"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DnsRecord(CvlanRow, Base):
    """A tenant-defined record in a CVLAN's zone (docs/DNS.md)."""

    __tablename__ = "dns_records"
    __table_args__ = (UniqueConstraint("cvlan_id", "name", "rtype", "value"),)
    name: Mapped[str] = mapped_column(String(160))
    rtype: Mapped[str] = mapped_column(String(10))
    value: Mapped[str] = mapped_column(String(600))
    ttl: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class DnsForwarder(CvlanRow, Base):
    """Queries for domain (and below) from a CVLAN's nodes go to servers (split DNS, docs/DNS.md)."""

    __tablename__ = "dns_forwarders"
    __table_args__ = (UniqueConstraint("cvlan_id", "domain"),)
    domain: Mapped[str] = mapped_column(String(200))
    servers: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(TS)


class NodeRoute(CvlanRow, Base):
    """A subnet route a node advertises (or its exit-node offer, prefix 0.0.0.0/0), and whether a
    tenant admin or an auto-approval rule approved it. Kept when the node stops advertising it, so
    advertising it again needs no new approval."""

    __tablename__ = "node_routes"
    __table_args__ = (UniqueConstraint("node_id", "prefix"), Index("ix_node_routes_cvlan", "cvlan_id"))
    node_id: Mapped[NodeId] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(43))
    advertised: Mapped[bool] = mapped_column(Boolean, default=True)
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    refused: Mapped[str] = mapped_column(String(200), default="")
    """Why the route can never be used ("" = it can): overlaps the overlay, covers the controller..."""
    created_at: Mapped[dt.datetime] = mapped_column(TS)
    approved_at: Mapped[dt.datetime | None] = mapped_column(TS, nullable=True)


class RouteRule(CvlanRow, Base):
    """An auto-approval rule of a CVLAN (controller/subnetroutes.py AutoRule)."""

    __tablename__ = "route_rules"
    __table_args__ = (UniqueConstraint("cvlan_id", "kind", "prefix", "tag"),)
    kind: Mapped[str] = mapped_column(String(10))
    prefix: Mapped[str] = mapped_column(String(43), default="")
    tag: Mapped[str] = mapped_column(String(63), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS)
