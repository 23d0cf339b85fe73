"""Turn the controller's NetworkMap into the DesiredState cvland applies (pure)."""

from __future__ import annotations

from cvlan.agent.state import Identity
from cvlan.wire.ipc import (
    DesiredState,
    DnsForwardSpec,
    DnsHost,
    DnsRecordSpec,
    DnsState,
    PeerConfig,
    RelayInfo,
)
from cvlan.wire.pb import node_pb2 as pb


def desired_state(
    ident: Identity, m: pb.NetworkMap, listen_port: int, control_hosts: list[str] | None = None
) -> DesiredState:
    peers = [
        PeerConfig(
            public_key=p.wg_public_key.hex(),
            allowed_ips=list(p.allowed_ips),
            endpoints=list(p.endpoints),
            relay_region=p.home_relay_region,
            name=p.name,
            node_id=p.node_id,
            routes=list(p.routes),
            exit_node=p.exit_node,
            address=p.address,
        )
        for p in m.peers
        if len(p.wg_public_key) == 32
    ]
    peers += [
        PeerConfig(
            public_key=v.wg_public_key.hex(),
            allowed_ips=list(v.allowed_ips),
            endpoints=[v.endpoint] if v.endpoint else [],
            relay_region=v.region,
            name=v.name,
            via_vrouter=True,
        )
        for v in m.vrouters
        if len(v.wg_public_key) == 32
    ]
    relays = [RelayInfo(region=r.name, url=n.url, stun=n.stun) for r in m.relay_map.regions for n in r.relays]
    rules: list[dict[str, object]] = [
        {"action": r.action, "src": list(r.src), "proto": r.proto, "ports": list(r.ports)}
        for r in m.filter_rules
    ]
    return DesiredState(
        version=m.version,
        node_id=m.self.node_id or ident.node_id,
        node_name=m.self.name or ident.node_name,
        private_key=ident.wg_private_key,
        address=m.self.address or ident.address,
        cvlan_subnet=m.cvlan_subnet or ident.cvlan_subnet,
        listen_port=listen_port,
        peers=peers,
        relays=relays,
        filter_rules=rules,
        tls_cert_pem=ident.cert_pem,
        tls_key_pem=ident.tls_key_pem,
        ca_pem=ident.ca_pem,
        dns=dns_state(m),
        routes=list(m.self.routes),
        exit_node=m.self.exit_node,
        control_hosts=control_hosts or [],
    )


def dns_state(m: pb.NetworkMap) -> DnsState | None:
    """The resolver's data: the node's own name and those of the peers the policy lets it reach."""
    d = m.dns
    if not m.HasField("dns") or not d.zone or not d.resolver:
        return None
    allowed = set(d.peer_ids)
    hosts = [DnsHost(name=m.self.dns_name, address=m.self.address.split("/")[0])] if m.self.dns_name else []
    hosts += [
        DnsHost(name=p.dns_name, address=p.address.split("/")[0])
        for p in m.peers
        if p.dns_name and p.address and (d.all_peers or p.node_id in allowed)
    ]
    return DnsState(
        zone=d.zone,
        resolver=d.resolver,
        hosts=hosts,
        records=[DnsRecordSpec(name=r.name, type=r.type, value=r.value, ttl=r.ttl) for r in d.records],
        forwarders=[DnsForwardSpec(domain=f.domain, servers=list(f.servers)) for f in d.forwarders],
    )
