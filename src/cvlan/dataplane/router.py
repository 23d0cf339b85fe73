"""Addresses, MTU, link state and routes of the WireGuard interface, applied by diff (pyroute2)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Protocol


class RouterError(Exception):
    """A netlink change was refused."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """What the interface should look like: one overlay address, an MTU, up, these routes."""

    ifname: str
    address: str
    """The overlay address with its prefix, e.g. "100.64.0.5/32"."""
    mtu: int
    routes: tuple[str, ...]
    """CIDRs routed into the interface (the CVLAN subnet, plus any subnet a vrouter peer carries)."""
    extra_addresses: tuple[str, ...] = ()
    """More local addresses with prefix, e.g. the DNS resolver's "100.100.100.100/32"."""


class Router(Protocol):
    def apply(self, cfg: RouterConfig) -> None: ...
    def teardown(self) -> None: ...


class NetlinkRouter:
    """Applies RouterConfig in the current network namespace, changing only what differs."""

    def __init__(self) -> None:
        self._prev: RouterConfig | None = None

    def apply(self, cfg: RouterConfig) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        prev = self._prev if self._prev is not None and self._prev.ifname == cfg.ifname else None
        try:
            with IPRoute() as ipr:
                idx = _index(ipr, cfg.ifname)
                self._apply_link(ipr, idx, cfg, prev)
                self._apply_routes(ipr, idx, cfg, prev)
        except NetlinkError as e:
            self._prev = None  # unknown state: next apply starts from the device's own state
            raise RouterError(f"configure {cfg.ifname}: {e}") from e
        self._prev = cfg

    def _apply_link(self, ipr: Any, idx: int, cfg: RouterConfig, prev: RouterConfig | None) -> None:
        if prev is None or prev.mtu != cfg.mtu:
            ipr.link("set", index=idx, mtu=cfg.mtu)
        main = ipaddress.ip_interface(cfg.address)
        want = [main, *(ipaddress.ip_interface(a) for a in cfg.extra_addresses)]
        have = {
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=idx)
        }
        # The kernel takes the first address of the interface as the source of what it sends into
        # the tunnel: the node's own address must be added before the extra ones (the resolver's).
        drop = have if main not in have else have - set(want)
        for old in drop:
            ipr.addr("del", index=idx, address=str(old.ip), prefixlen=old.network.prefixlen)
        for new in want:
            if new in drop or new not in have:
                ipr.addr("add", index=idx, address=str(new.ip), prefixlen=new.network.prefixlen)
        if prev is None:
            ipr.link("set", index=idx, state="up")

    def _apply_routes(self, ipr: Any, idx: int, cfg: RouterConfig, prev: RouterConfig | None) -> None:
        have = set(_routes_of(ipr, idx))
        want = {str(ipaddress.ip_network(r, strict=False)) for r in cfg.routes}
        for r in sorted(have - want):
            with contextlib.suppress(Exception):
                ipr.route("del", dst=r, oif=idx)
        for r in sorted(want - have):
            ipr.route("replace", dst=r, oif=idx, scope=253)  # 253 = link: on-link, no gateway

    def teardown(self) -> None:
        self._prev = None


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RouterError(f"configure {ifname}: no such interface")
    return int(found[0])


def _routes_of(ipr: Any, idx: int) -> list[str]:
    out = []
    for r in ipr.get_routes(family=socket.AF_INET, oif=idx, table=254):
        dst = r.get_attr("RTA_DST")
        if dst is None or r["proto"] == 2:  # proto 2 = kernel (the address's own prefix route)
            continue
        out.append(f"{dst}/{r['dst_len']}")
    return out


def connected_networks(exclude_ifnames: tuple[str, ...] = ()) -> list[str]:
    """The IPv4 networks of this namespace's interface addresses (e.g. "10.1.0.0/24"), but those of
    loopback and of the excluded interfaces: networks the host reaches without any tunnel."""
    from pyroute2 import IPRoute

    out: set[str] = set()
    with IPRoute() as ipr:
        names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            if names.get(int(a["index"])) in exclude_ifnames:
                continue
            iface = ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            if not iface.ip.is_loopback:
                out.add(str(iface.network))
    return sorted(out)


def local_addresses(exclude_ifnames: tuple[str, ...] = ()) -> list[str]:
    """Global IPv4 addresses of this namespace's interfaces that can carry WireGuard's UDP.

    Skipped: loopback, link-local, the excluded interfaces, and tunnel devices (tun, wireguard):
    another overlay's address (a second CVLAN on the same host) is no endpoint for this one."""
    from pyroute2 import IPRoute

    out: list[str] = []
    with IPRoute() as ipr:
        skip: set[int] = set()
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if link.get_attr("IFLA_IFNAME") in exclude_ifnames or kind in ("tun", "wireguard"):
                skip.add(int(link["index"]))
        for a in ipr.get_addr(family=socket.AF_INET):
            ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
            if int(a["index"]) in skip or ip.is_loopback or ip.is_link_local:
                continue
            out.append(str(ip))
    return out


class FakeRouter:
    """Records the configs it was given."""

    def __init__(self) -> None:
        self.applied: list[RouterConfig] = []
        self.torn_down = False

    def apply(self, cfg: RouterConfig) -> None:
        self.applied.append(cfg)

    def teardown(self) -> None:
        self.torn_down = True
