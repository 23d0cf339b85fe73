"""The IPC contract between cvlan-ctrl (unprivileged) and cvland (root), version 1.

Transport: a Unix stream socket (mode 0600, or 0660 with a group), newline-delimited JSON.
Every request is one line {"v": 1, "id": N, "op": OP, ...}; every answer one line
{"v": 1, "id": N, "ok": true, ...} or {"v": 1, "id": N, "ok": false, "error": "one line"}.
A peer speaking a higher "v" is answered with ok=false and error "unsupported ipc version N".
Documented for operators in docs/IPC.md.

Ops:
  "apply"  body: {"state": DesiredState}  -> {"applied_version": int}
           Idempotent. The whole desired state is sent each time; cvland diffs it against what it
           last applied. cvlan-ctrl sends it on every map change and on (re)connect.
  "status" body: {}                       -> DeviceStatus fields
  "ping"   body: {}                       -> {}
  "denied" body: {}                       -> DeniedReport fields
           Flows the node's filter dropped since the previous "denied" call (the counts are reset).
  "down"   body: {}                       -> DeviceStatus fields
           Take the node off the network: the WireGuard interface (engine, address, routes) and the
           nftables table are removed, the desired state is kept. cvland remembers it in its state
           dir and stays down across restarts; "apply" is accepted and stored but not put on the host.
  "up"     body: {} or {"exit_node": NAME} -> DeviceStatus fields
           Undo "down": start the engine again and apply the last desired state (same address).
           With "exit_node": also select that peer (an approved exit node) for all internet traffic,
           or "" for none; remembered across restarts (docs/EXIT-NODES.md). Absent: unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

IPC_VERSION = 1
MAX_LINE = 8 << 20
"""A line longer than this is refused (a 10-node CVLAN map is a few KB; this bounds a bad client)."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PeerConfig(_Wire):
    public_key: str
    """64 hex chars (WireGuard key, hex as in the UAPI)."""
    allowed_ips: list[str]
    """CIDRs routed to this peer: its /32, or a whole subnet for a vrouter."""
    endpoints: list[str] = Field(default_factory=list)
    """Candidate "ip:port" endpoints, most preferred first. Empty: reachable only via relay or not at all."""
    keepalive: int = 25
    """persistent_keepalive_interval in seconds; 0 disables."""
    relay_region: str = ""
    """The peer's home relay region ("" = none known)."""
    name: str = ""
    """For display only (cvlancli peers)."""
    via_vrouter: bool = False
    """True for a vrouter hub peer (carries a subnet, not a /32)."""
    node_id: int = 0
    """The peer's node id (0 = unknown, or a vrouter), for health reports; of several peers carrying
    the same subnet route, the first alive in node_id order carries it."""
    routes: list[str] = Field(default_factory=list)
    """Approved subnet routes the peer carries; cvland adds each to one such peer's allowed IPs."""
    exit_node: bool = False
    """The peer is an approved exit node this node may select."""
    address: str = ""
    """The peer's overlay address as a /32 CIDR ("" = unknown); health probes go there. A peer with
    an address but no allowed IPs of its own is reached through a vrouter."""


class RelayInfo(_Wire):
    region: str
    url: str
    """wss:// or https:// URL of the relay."""
    stun: str = ""
    """host:port of its STUN responder ("" = none)."""


class DnsHost(_Wire):
    name: str
    """Fully qualified, lower case, no trailing dot."""
    address: str
    """The overlay address (no prefix length)."""


class DnsRecordSpec(_Wire):
    name: str
    """Relative to the zone ("@": the zone itself)."""
    type: str
    value: str
    """Zone-file text of the record data."""
    ttl: int = 0


class DnsForwardSpec(_Wire):
    domain: str
    servers: list[str]


class DnsState(_Wire):
    """What cvland's resolver answers and how the host is pointed at it (docs/DNS.md)."""

    zone: str
    """The CVLAN's zone; also the host's search domain (short names)."""
    resolver: str
    """The overlay address the resolver listens on (UDP and TCP port 53)."""
    hosts: list[DnsHost] = Field(default_factory=list)
    """The node itself and the peers it may reach under the policy; every other name in the zone is
    NXDOMAIN."""
    records: list[DnsRecordSpec] = Field(default_factory=list)
    forwarders: list[DnsForwardSpec] = Field(default_factory=list)


class DesiredState(_Wire):
    version: int
    """The map version this state was built from (monotonic per CVLAN)."""
    node_id: int
    node_name: str = ""
    private_key: str
    """64 hex chars. Sent only over the owner-only socket; never logged."""
    address: str
    """The node's overlay address as a /32 CIDR, e.g. "100.64.0.5/32"."""
    cvlan_subnet: str
    """The CVLAN's subnet, routed into the WireGuard interface."""
    listen_port: int = 51820
    mtu: int = 1280
    peers: list[PeerConfig] = Field(default_factory=list)
    relays: list[RelayInfo] = Field(default_factory=list)
    filter_rules: list[dict[str, object]] = Field(default_factory=list)
    """Compiled packet-filter rules for inbound traffic; empty list = allow all from the CVLAN."""
    tls_cert_pem: str = ""
    tls_key_pem: str = ""
    ca_pem: str = ""
    """Node credentials for the relay connection (mutual TLS). Owner-only socket; never logged."""
    dns: DnsState | None = None
    """None: the controller gives no names; cvland runs no resolver and leaves the host's DNS alone."""
    routes: list[str] = Field(default_factory=list)
    """This node's approved subnet routes: it forwards traffic from the CVLAN to these only."""
    exit_node: bool = False
    """This node is an approved exit node: it forwards and masquerades its peers' traffic."""
    control_hosts: list[str] = Field(default_factory=list)
    """The controller's IP addresses, kept out of the tunnel when an exit node is selected."""


class PeerStatus(_Wire):
    public_key: str
    name: str = ""
    allowed_ips: list[str] = Field(default_factory=list)
    endpoint: str = ""
    """The endpoint in use ("" = none yet)."""
    last_handshake: float = 0.0
    """Unix time of the last completed handshake; 0 = never."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    path: str = "none"
    """"direct", "relay", "vrouter" or "none"."""
    node_id: int = 0
    """The peer's node id (0 = unknown, or a vrouter)."""
    relay_region: str = ""
    """The relay region carrying the path when path is "relay"."""
    via_vrouter: bool = False
    """True for a vrouter hub peer itself."""
    rtt_ms: float | None = None
    """Median round-trip time of the answered health probes in the window (None = none answered)."""
    probes_sent: int = 0
    """Health probes sent to the peer in the window (the last PROBE_WINDOW probes)."""
    probes_answered: int = 0


class DnsStatus(_Wire):
    zone: str
    resolver: str
    """"address:53" the resolver listens on ("" = not listening, see error)."""
    host_config: str
    """How the host's resolver is pointed at it: "systemd-resolved", "resolv.conf" or "none"."""
    names: int = 0
    """Names the resolver answers for (the node and its reachable peers)."""
    error: str = ""
    """One line if the resolver or the host configuration failed; "" = healthy."""


class DeviceStatus(_Wire):
    interface: str
    engine: str
    applied_version: int = 0
    node_id: int = 0
    """The node the applied desired state belongs to (0 = none applied yet)."""
    address: str = ""
    """The node's overlay address from the applied desired state ("" = none yet)."""
    down: bool = False
    """True after "down" until "up": the node is off the network on purpose."""
    listen_port: int = 0
    local_endpoints: list[str] = Field(default_factory=list)
    """This host's "ip:port" candidates (interface addresses + WireGuard port), for cvlan-ctrl to report."""
    mapped_endpoint: str = ""
    """The STUN-observed public "ip:port" of the WireGuard port ("" = unknown)."""
    home_relay_region: str = ""
    peers: list[PeerStatus] = Field(default_factory=list)
    dns: DnsStatus | None = None
    """None: no DNS configured (no names in the map, or the node is down)."""
    exit_node: str = ""
    """The selected exit node's name ("" = none: internet traffic goes the host's own way)."""
    exit_node_error: str = ""
    """Why the selected exit node is not in use ("" = it is, or none is selected)."""
    routes: dict[str, str] = Field(default_factory=dict)
    """Subnet route -> the name of the peer that carries it now."""
    forwarding: list[str] = Field(default_factory=list)
    """What this node forwards for its peers: its approved routes, and "0.0.0.0/0" as an exit node."""
    relays: list[RelayInfo] = Field(default_factory=list)
    """The relay map of the applied state (regions, URLs, STUN servers), for `cvlancli netcheck`."""


class DeniedFlow(_Wire):
    src: str
    dst: str
    proto: str
    """"tcp", "udp", "icmp" or an IP protocol number."""
    dport: int = 0
    """0 for protocols without ports."""
    packets: int


class DeniedReport(_Wire):
    flows: list[DeniedFlow] = Field(default_factory=list)
    overflow: int = 0
    """Packets of further flows that did not fit the bounded table."""
    enabled: bool = True
    """False when denied-flow logging is unavailable (e.g. another process holds the NFLOG group)."""
