"""The DNS part of a CVLAN's map: node names, the zone's records and forwarders, and which peers'
names resolve for each member under the CVLAN's policy (node.proto DnsConfig, docs/DNS.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol

from cvlan.controller.db.models import DnsForwarder, DnsRecord
from cvlan.wire.dnsnames import RESOLVER_ADDRESS
from cvlan.wire.pb import node_pb2 as pb


class _Reachable(Protocol):
    node_id: int
    address: str
    filter_rules: list[pb.FilterRule]


def cvlan_part(zone: str, records: Iterable[DnsRecord], forwarders: Iterable[DnsForwarder]) -> pb.DnsConfig:
    """What every member of the CVLAN gets: zone, resolver address, records, forwarders."""
    return pb.DnsConfig(
        zone=zone,
        resolver=RESOLVER_ADDRESS,
        records=[pb.DnsRecord(name=r.name, type=r.rtype, value=r.value, ttl=r.ttl) for r in records],
        forwarders=[pb.DnsForwarder(domain=f.domain, servers=list(f.servers)) for f in forwarders],
    )


def may_reach(rules: Sequence[pb.FilterRule], src: str) -> bool:
    """Whether a packet from src may reach the node these inbound rules protect, on some port.

    Empty rules allow the CVLAN. Rules are evaluated in order, first match wins: the first accept that
    covers src allows; a drop of every protocol and port that covers src first refuses; a narrower
    drop (one protocol or some ports) leaves other traffic to the later rules."""
    if not rules:
        return True
    addr = ipaddress.ip_address(src)
    for r in rules:
        if r.dst:
            continue  # a forward rule: traffic through the node, not to it
        if r.src and not any(addr in ipaddress.ip_network(c, strict=False) for c in r.src):
            continue
        if r.action == "accept":
            return True
        if not r.proto and not r.ports:
            return False
    return False


def receiver_parts(members: Sequence[_Reachable]) -> dict[int, pb.DnsConfig]:
    """node id -> its own part of DnsConfig: all_peers, or the ids of the peers it may reach."""
    out: dict[int, pb.DnsConfig] = {}
    if all(not m.filter_rules for m in members):
        return {m.node_id: pb.DnsConfig(all_peers=True) for m in members}
    for me in members:
        ids = [
            p.node_id for p in members if p.node_id != me.node_id and may_reach(p.filter_rules, me.address)
        ]
        if len(ids) == len(members) - 1:
            out[me.node_id] = pb.DnsConfig(all_peers=True)
        else:
            out[me.node_id] = pb.DnsConfig(peer_ids=ids)
    return out
