"""The pure translation of a DesiredState into what each backend should hold."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from cvlan.cvland.resolver import Table
from cvlan.dataplane.firewall import FirewallError, render_ruleset
from cvlan.dataplane.policyroute import EXIT_FWMARK, ExitPlan, exit_plan
from cvlan.dataplane.router import RouterConfig
from cvlan.dataplane.wgconfig import WgConfig, WgPeer
from cvlan.wire.endpoint import parse_endpoint
from cvlan.wire.ipc import DesiredState, DnsState
from cvlan.wire.keys import parse_key
from cvlan.wire.routes import EXIT_ROUTE


class InvalidState(ValueError):
    """The desired state cannot be applied as given (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Plan:
    wg: WgConfig
    router: RouterConfig
    ruleset: str
    exit: ExitPlan | None = None
    """Policy routing through the selected exit node (None: the host's own routing)."""
    forward: bool = False
    """The node forwards for its peers (approved subnet routes, or exit node)."""


def literal_hosts(text: str) -> list[str]:
    """The host of a URL or host:port when it is an IPv4 literal (no name resolution)."""
    host = text.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    try:
        return [str(ipaddress.IPv4Address(host))]
    except ValueError:
        return []


def exit_excludes(ds: DesiredState, resolve: Callable[[str], list[str]] = literal_hosts) -> list[str]:
    """What must never go through an exit node: the controller, the relays (their URLs and STUN
    servers) and the peers' direct endpoints."""
    out = list(ds.control_hosts)
    for r in ds.relays:
        out += resolve(r.url) + (resolve(r.stun) if r.stun else [])
    for p in ds.peers:
        for e in p.endpoints:
            out += literal_hosts(e)
    return out


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
            if p.address and ipaddress.ip_interface(p.address).version != 4:
                raise ValueError(f"peer {i}: address {p.address} is not IPv4")
            if not 0 <= p.keepalive < 65536:
                raise ValueError(f"peer {i}: keepalive {p.keepalive} out of range")
            for r in p.routes:
                ipaddress.IPv4Network(r)
        for r in ds.routes:
            ipaddress.IPv4Network(r)
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


def plan(
    ds: DesiredState,
    ifname: str,
    endpoint_of: Callable[[str], str],
    resolve: Callable[[str], list[str]] = literal_hosts,
) -> Plan:
    """Build the WireGuard config, the router config, the nft ruleset and the exit-node routing for
    ds (as shaped by cvland/subnets.py: a peer with 0.0.0.0/0 in its allowed IPs is the exit node).

    endpoint_of(public_key) gives the endpoint chosen by path selection for each peer; resolve the
    addresses of a relay's host."""
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
    via_exit = any(EXIT_ROUTE in p.allowed_ips for p in peers)
    wg = WgConfig(
        private_key=parse_key(ds.private_key),
        listen_port=ds.listen_port,
        peers=peers,
        fwmark=EXIT_FWMARK if via_exit else 0,
    )
    subnet = ipaddress.ip_network(ds.cvlan_subnet, strict=False)
    routes = {str(subnet)}
    for p in peers:
        for a in p.allowed_ips:
            net = ipaddress.ip_network(a)
            if net.prefixlen and (net.version != subnet.version or not net.subnet_of(subnet)):  # type: ignore[arg-type]
                routes.add(str(net))
    address = str(ipaddress.ip_interface(ds.address))
    extra = (f"{ds.dns.resolver}/32",) if ds.dns is not None else ()
    router = RouterConfig(
        ifname=ifname, address=address, mtu=ds.mtu, routes=tuple(sorted(routes)), extra_addresses=extra
    )
    try:
        ruleset = render_ruleset(ifname, str(subnet), ds.filter_rules, ds.routes, ds.exit_node)
    except FirewallError as e:
        raise InvalidState(str(e)) from None
    exits = exit_plan(ifname, exit_excludes(ds, resolve)) if via_exit else None
    forward = bool(ds.routes) or ds.exit_node
    return Plan(wg=wg, router=router, ruleset=ruleset, exit=exits, forward=forward)
