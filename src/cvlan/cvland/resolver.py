"""What cvland's resolver answers (pure): the CVLAN's zone from the map, and where everything else goes.

A query is answered here when its name is in the CVLAN's zone (the node, the peers the policy lets it
reach, the tenant's records), is under the overlay domain (another CVLAN's or tenant's name:
NXDOMAIN, never forwarded), or is the reverse name of a visible node's address. A name under a
forwarder's domain goes to that forwarder's servers; every other name to the host's own upstream
resolvers. The wire format is dnspython's (docs/DNS.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from cvlan.wire import dnsnames
from cvlan.wire.ipc import DnsState

IN = dns.rdataclass.IN
SOA_TTL = 60
MAX_CHASE = 8
"""CNAMEs followed inside the zone before the answer is cut (RFC 1034 loops)."""


@dataclass(frozen=True)
class Forward:
    """Not ours: send the query to these servers (in order)."""

    servers: tuple[str, ...]
    domain: str = ""
    """The forwarder's domain; "" = the host's upstream resolvers."""


@dataclass
class Table:
    """The resolver's data, built from the map's DnsState (ValueError names anything invalid)."""

    zone: dns.name.Name
    domain: dns.name.Name
    rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = field(default_factory=dict)
    names: set[dns.name.Name] = field(default_factory=set)
    """Every owner name in the zone (hosts and records), for NODATA versus NXDOMAIN."""
    forwarders: list[tuple[dns.name.Name, tuple[str, ...]]] = field(default_factory=list)
    hosts: int = 0

    @classmethod
    def build(cls, state: DnsState) -> Table:
        zone_text = dnsnames.check_domain(state.zone, "zone")
        parts = zone_text.split(".", 2)
        if len(parts) < 3:
            raise ValueError(f"zone {state.zone!r}: expected <cvlan>.<tenant>.<domain>")
        t = cls(zone=dns.name.from_text(zone_text), domain=dns.name.from_text(parts[2]))
        try:
            ipaddress.IPv4Address(state.resolver)
        except ValueError:
            raise ValueError(f"resolver {state.resolver!r}: expected an IPv4 address") from None
        for h in state.hosts:
            t._add_host(h.name, h.address)
        hosts = set(t.names)
        for r in state.records:
            owner, rtype, value, ttl = dnsnames.check_record(r.name, r.type, r.value, r.ttl)
            name = t.zone if owner == "@" else dns.name.from_text(owner, origin=t.zone)
            if name in hosts:
                continue  # a node's own name wins over a record of the same name
            rd = dns.rdata.from_text(
                IN, dns.rdatatype.from_text(rtype), value, origin=dns.name.root, relativize=False
            )
            t._add(name, rd, ttl or dnsnames.DEFAULT_TTL)
        for f in sorted(state.forwarders, key=lambda f: -len(f.domain)):
            servers = tuple(dnsnames.check_server(x) for x in f.servers)
            t.forwarders.append((dns.name.from_text(dnsnames.check_domain(f.domain)), servers))
        return t

    def _add_host(self, fqdn: str, address: str) -> None:
        name = dns.name.from_text(dnsnames.check_domain(fqdn, "host name"))
        if not name.is_subdomain(self.zone):
            raise ValueError(f"host name {fqdn!r} is outside the zone {self.zone}")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"host {fqdn}: address {address!r} is not an IP address") from None
        rtype = "A" if ip.version == 4 else "AAAA"
        self._add(name, dns.rdata.from_text(IN, rtype, str(ip)), dnsnames.DEFAULT_TTL)
        ptr = dns.rdata.from_text(IN, "PTR", name.to_text())
        self._add(dns.reversename.from_address(str(ip)), ptr, dnsnames.DEFAULT_TTL, in_zone=False)
        self.hosts += 1

    def _add(self, name: dns.name.Name, rd: dns.rdata.Rdata, ttl: int, in_zone: bool = True) -> None:
        key = (name, rd.rdtype)
        rrset = self.rrsets.get(key)
        if rrset is None:
            rrset = self.rrsets[key] = dns.rrset.RRset(name, IN, rd.rdtype)
        rrset.add(rd, ttl)
        if in_zone:
            self.names.add(name)

    def soa(self) -> dns.rrset.RRset:
        text = f"ns.{self.zone} hostmaster.{self.zone} 1 3600 600 86400 {SOA_TTL}"
        return dns.rrset.from_text(self.zone, SOA_TTL, IN, "SOA", text)

    def exists(self, name: dns.name.Name) -> bool:
        """The name owns records, or is an empty non-terminal above one (RFC 8020)."""
        return name == self.zone or any(n.is_subdomain(name) for n in self.names)


def route(
    table: Table | None, q: dns.message.Message, upstreams: tuple[str, ...]
) -> dns.message.Message | Forward:
    """The answer to q, or where to forward it."""
    if q.opcode() != dns.opcode.QUERY or len(q.question) != 1:
        return _reply(q, dns.rcode.NOTIMP if q.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
    question = q.question[0]
    name = question.name
    if table is not None:
        if name.is_subdomain(table.zone):
            return answer(table, q)
        if name.is_subdomain(table.domain):
            return _nxdomain(table, q)  # another CVLAN or tenant: never resolved, never forwarded
        if (name, dns.rdatatype.PTR) in table.rrsets:
            return answer(table, q)
        for domain, servers in table.forwarders:
            if name.is_subdomain(domain):
                return Forward(servers, domain.to_text(omit_final_dot=True))
    if not upstreams:
        return _reply(q, dns.rcode.SERVFAIL)
    return Forward(upstreams)


def answer(table: Table, q: dns.message.Message) -> dns.message.Message:
    """An authoritative answer from the table (CNAMEs inside the zone are followed)."""
    question = q.question[0]
    r = _reply(q, dns.rcode.NOERROR)
    r.flags |= dns.flags.AA
    name, qtype = question.name, question.rdtype
    for _ in range(MAX_CHASE):
        if qtype == dns.rdatatype.SOA and name == table.zone:
            r.answer.append(table.soa())
            return r
        found = table.rrsets.get((name, qtype))
        if found is None and qtype == dns.rdatatype.ANY:
            found = next((rs for (n, _t), rs in table.rrsets.items() if n == name), None)
        if found is not None:
            r.answer.append(found)
            return r
        cname = table.rrsets.get((name, dns.rdatatype.CNAME))
        if cname is None:
            break
        r.answer.append(cname)
        target = cname[0].target
        if not target.is_subdomain(table.zone):
            return r  # outside the zone: the client's resolver follows it
        name = target
    if not r.answer and not table.exists(name):
        r.set_rcode(dns.rcode.NXDOMAIN)
    if not r.answer or r.answer[-1].rdtype == dns.rdatatype.CNAME:
        r.authority.append(table.soa())
    return r


def _nxdomain(table: Table, q: dns.message.Message) -> dns.message.Message:
    r = _reply(q, dns.rcode.NXDOMAIN)
    r.flags |= dns.flags.AA
    r.authority.append(table.soa())
    return r


def _reply(q: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    r = dns.message.make_response(q, recursion_available=True)
    r.set_rcode(rcode)
    return r
