"""The JSON objects the management API answers with, one TypedDict a resource: what a reader of the
API (docs/API.md) finds in each answer, and what the type checker holds the views in ops to. Times
are UTC datetimes (ISO 8601 with Z on the wire), keys and digests bytes (hex on the wire)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, NotRequired, TypedDict, TypeVar

from cvlan.wire.ids import CvlanId, TenantId

__all__ = [
    "ApiTokenCreated",
    "ApiTokenView",
    "AttachmentSet",
    "AttachmentView",
    "AuditView",
    "CvlanView",
    "DaemonCreated",
    "DeniedFlowView",
    "DeviceSignin",
    "DnsForwarderView",
    "DnsRecordView",
    "DnsView",
    "EnrollmentTokenCreated",
    "EnrollmentTokenView",
    "GroupRoleView",
    "Items",
    "PolicySet",
    "PolicyView",
    "ProviderView",
    "RegionView",
    "RelayCreated",
    "RelayView",
    "RouteApprovalSet",
    "RouteRuleAdded",
    "RouteRuleView",
    "RouteView",
    "RuleApproval",
    "SigninPolicy",
    "TenantCounts",
    "TenantShown",
    "TenantView",
    "UserCreated",
    "UserView",
    "VrouterCreated",
    "VrouterView",
    "WhoAmI",
]


V = TypeVar("V")


class Items(TypedDict, Generic[V]):
    """A whole listing (the short ones that are not paged): its items and how many."""

    items: list[V]
    total: int


class TenantView(TypedDict):
    id: int
    name: str
    display_name: str
    node_cert_lifetime_s: int | None
    """Lifetime of the tenant's node certificates; None: the controller's setting."""
    created_at: dt.datetime


class CvlanView(TypedDict):
    id: int
    tenant_id: TenantId
    name: str
    subnet: str
    mode: str
    """mesh or hub."""
    version: int
    """The CVLAN's map version: it grows with every change its nodes must learn."""
    created_at: dt.datetime
    nodes: NotRequired[int]
    """How many nodes it has (in listings)."""


class EnrollmentTokenView(TypedDict):
    id: int
    prefix: str
    """The token's public part: its name in listings and in revocation."""
    cvlan_id: CvlanId
    cvlan: str
    reusable: bool
    max_uses: int | None
    uses: int
    tags: list[str]
    ephemeral: bool
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class EnrollmentTokenCreated(EnrollmentTokenView):
    token: str
    """The whole token, shown once."""
    join_steps: list[str]
    """What to run on a fresh machine to put it on the CVLAN."""
    join_command: str


class UserView(TypedDict):
    id: int
    email: str
    role: str | None
    """The user's role in the tenant asked about (None: none, or a platform listing)."""
    platform_admin: bool
    created_at: dt.datetime


class UserCreated(UserView):
    password: NotRequired[str]
    """The generated password, shown once (when none was given)."""


class ApiTokenView(TypedDict):
    id: int
    prefix: str
    name: str
    tenant_id: TenantId | None
    """None: a platform token."""
    role: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class RegionView(TypedDict):
    id: int
    name: str
    created_at: dt.datetime


class RelayView(TypedDict):
    id: int
    name: str
    region: str
    url: str
    """Where nodes reach the relay (https://)."""
    stun: str
    """HOST:PORT of its STUN responder, or empty."""
    last_seen: dt.datetime | None
    created_at: dt.datetime


class VrouterView(TypedDict):
    id: int
    name: str
    region: str
    endpoint: str
    """HOST:PORT of its WireGuard hub."""
    wg_public_key: str | None
    """Hex; None until the vrouter has registered."""
    last_seen: dt.datetime | None
    created_at: dt.datetime


class DaemonCreated(TypedDict):
    """What registering a relay or vrouter answers besides its view."""

    token: str
    """The bootstrap token, shown once."""
    command: str
    """The command that starts the daemon with it."""


class ApiTokenCreated(ApiTokenView):
    token: str
    """The whole token, shown once."""


class RelayCreated(RelayView, DaemonCreated):
    pass


class VrouterCreated(VrouterView, DaemonCreated):
    pass


class AttachmentView(TypedDict):
    """A vrouter serving a CVLAN."""

    vrouter: str
    vrouter_id: int
    region: str
    cvlan: str
    endpoint: str
    registered: bool
    last_seen: dt.datetime | None


class AttachmentSet(AttachmentView):
    changed: bool
    """False: it served the CVLAN already."""


class DnsRecordView(TypedDict):
    id: int
    name: str
    type: str
    value: str
    ttl: int
    """Seconds; 0: the zone's default."""


class DnsForwarderView(TypedDict):
    id: int
    domain: str
    servers: list[str]


class DnsView(TypedDict):
    """A CVLAN's DNS: its zone, the resolver address nodes ask, its records and forwarders."""

    cvlan: str
    zone: str
    resolver: str
    records: list[DnsRecordView]
    forwarders: list[DnsForwarderView]


class PolicyView(TypedDict):
    cvlan: str
    cvlan_id: int
    policy: dict[str, Any] | None
    """The document (docs/POLICY.md); None: no policy, all members reach each other."""
    hash: str
    updated_at: dt.datetime | None
    effect: str
    """What the policy means for the CVLAN's members, in words."""


class PolicySet(PolicyView):
    changed: bool


class DeniedFlowView(TypedDict):
    """Denied packets of one (CVLAN, src, dst, proto, dport), summed over the nodes' reports."""

    cvlan: str
    src: str
    dst: str
    proto: str
    dport: int
    packets: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None
    reports: int


class WhoAmI(TypedDict):
    actor: str
    platform_admin: bool
    roles: dict[str, str]
    """Tenant id -> role."""


class TenantCounts(TypedDict):
    cvlans: int
    nodes: int


class TenantShown(TenantView, TenantCounts):
    pass


class RouteRuleView(TypedDict):
    id: int
    kind: str
    prefix: str
    tag: str


class RouteView(TypedDict):
    """A subnet route (or exit-node offer) a node advertises, and its state (docs/ROUTES.md)."""

    node: str
    node_id: int
    cvlan: str
    route: str
    exit_node: bool
    state: str
    """approved, pending or refused."""
    approved: bool
    advertised: bool
    reason: str
    """Why it was refused ("" otherwise)."""
    primary: bool
    """Approved, and this node is the one its CVLAN routes the prefix through."""
    advertisers: int


class RouteApprovalSet(TypedDict):
    changed: list[str]
    """The routes whose approval this changed."""
    items: list[RouteView]
    """The node's routes after the change."""


class RuleApproval(TypedDict):
    node: str
    route: str


class RouteRuleAdded(RouteRuleView):
    approved: list[RuleApproval]
    """What the new rule approved at once."""


class ProviderView(TypedDict):
    """An identity provider users may sign in with (docs/AUTH.md)."""

    name: str
    display_name: str


class DeviceSignin(TypedDict):
    """A device sign-in started (cvlan login): what the user opens, and how to ask for the result."""

    handle: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: int
    expires_in: int


class GroupRoleView(TypedDict):
    """A mapping of an identity provider's group to a role in the tenant."""

    id: int
    provider: str
    group: str
    role: str
    created_at: dt.datetime


class SigninPolicy(TypedDict):
    tenant: str
    local_passwords: bool
    """False: the tenant's users sign in only through an identity provider."""


class AuditView(TypedDict):
    id: int
    tenant_id: TenantId | None
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str
    created_at: dt.datetime
