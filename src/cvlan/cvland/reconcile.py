"""The pure translation of a DesiredState into what each backend should hold."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from cvlan.cvland.resolver import Table
from cvlan.dataplane.firewall import FirewallError, render_ruleset
from cvlan.dataplane.router import RouterConfig
from cvlan.dataplane.wgconfig import WgConfig, WgPeer
from cvlan.wire.endpoint import parse_endpoint
from cvlan.wire.ipc import DesiredState, DnsState
from cvlan.wire.keys import parse_key


class InvalidState(ValueError):
    """The desired state cannot be applied as given (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Plan:
    wg: WgConfig
    router: RouterConfig
    ruleset: str


def validate(ds: DesiredState) -> None:
    """Raise InvalidState with one clear line for anything the backends would refuse."""
    try:
        parse_key(ds.private_key, "private_key")
        iface = ipaddress.ip_interface(ds.address)
        net = ipaddress.ip_network(ds.cvlan_subnet, strict=False)
        if iface.version != 4 or net.version != 4:
            raise ValueError("address and cvlan_subnet must be IPv4")
        if iface.ip not in net:
            raise ValueError(f"address {ds.address} is outside cvlan_subnet {ds.cvlan_subnet}")
        if not 0 <= ds.listen_port < 65536:
            raise ValueError(f"listen_port {ds.listen_port}: out of range")
        if not 576 <= ds.mtu <= 9000:
            raise ValueError(f"mtu {ds.mtu}: expected 576-9000")
        seen: set[str] = set()
        for i, p in enumerate(ds.peers):
            key = parse_key(p.public_key, f"peer {i} public_key")
            if key in seen:
                raise ValueError(f"peer {i}: duplicate public_key {key[:8]}")
            seen.add(key)
            for a in p.allowed_ips:
                ipaddress.ip_network(a, strict=False)
            for e in p.endpoints:
                parse_endpoint(e)
            if not 0 <= p.keepalive < 65536:
                raise ValueError(f"peer {i}: keepalive {p.keepalive} out of range")
        if ds.dns is not None:
            _validate_dns(ds.dns, net)
    except ValueError as e:
        raise InvalidState(str(e)) from None


def _validate_dns(d: DnsState, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    if ipaddress.ip_address(d.resolver) in net:
        raise ValueError(f"dns resolver {d.resolver} is inside cvlan_subnet {net}")
    try:
        Table.build(d)
    except ValueError as e:
        raise ValueError(f"dns: {e}") from None


def plan(ds: DesiredState, ifname: str, endpoint_of: Callable[[str], str]) -> Plan:
    """Build the WireGuard config, the router config and the nft ruleset for ds.

    endpoint_of(public_key) gives the endpoint chosen by path selection for each peer."""
    validate(ds)
    peers = tuple(
        WgPeer(
            public_key=parse_key(p.public_key),
            allowed_ips=tuple(str(ipaddress.ip_network(a, strict=False)) for a in p.allowed_ips),
            endpoint=endpoint_of(parse_key(p.public_key)),
            keepalive=p.keepalive,
        )
        for p in ds.peers
    )
    wg = WgConfig(private_key=parse_key(ds.private_key), listen_port=ds.listen_port, peers=peers)
    subnet = ipaddress.ip_network(ds.cvlan_subnet, strict=False)
    routes = {str(subnet)}
    for p in peers:
        for a in p.allowed_ips:
            net = ipaddress.ip_network(a)
            if net.version != subnet.version or not net.subnet_of(subnet):  # type: ignore[arg-type]
                routes.add(str(net))
    address = str(ipaddress.ip_interface(ds.address))
    extra = (f"{ds.dns.resolver}/32",) if ds.dns is not None else ()
    router = RouterConfig(
        ifname=ifname, address=address, mtu=ds.mtu, routes=tuple(sorted(routes)), extra_addresses=extra
    )
    try:
        ruleset = render_ruleset(ifname, str(subnet), ds.filter_rules)
    except FirewallError as e:
        raise InvalidState(str(e)) from None
    return Plan(wg=wg, router=router, ruleset=ruleset)
