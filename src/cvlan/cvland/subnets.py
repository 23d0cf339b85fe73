"""The node's side of subnet routes and exit nodes: which peer carries each approved route, and the
selected exit node.

WireGuard gives one CIDR to one peer only. When several peers advertise the same route, the first
alive one in node id order carries it (the controller shows the same one as primary); the others
stand by without it. Liveness and the hold-down before moving back come from
dataplane/hubchoice.py, as for vrouters: a standby takes over within SUSPECT_S + CONFIRM_S of the
primary going silent. A node that serves a route another node serves too sends keepalives every
HUB_KEEPALIVE seconds, so its peers hear it even when idle."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cvlan.common.clock import Clock
from cvlan.dataplane.hubchoice import HUB_KEEPALIVE, HubLiveness
from cvlan.dataplane.wgconfig import PeerState
from cvlan.wire.ipc import DesiredState, PeerConfig
from cvlan.wire.keys import KeyHex
from cvlan.wire.routes import EXIT_ROUTE


def carriers(ds: DesiredState, local: Iterable[str] = ()) -> dict[str, tuple[KeyHex, ...]]:
    """Each approved route of the peers -> the peers that carry it, in node id order. A route that
    overlaps one this node serves itself, or a network it is connected to (local), is left out: the
    node reaches that network directly, and routing it into the tunnel would cut it off."""
    own = [ipaddress.ip_network(r, strict=False) for r in [*ds.routes, *local]]
    out: dict[str, list[PeerConfig]] = {}
    for p in ds.peers:
        for r in p.routes:
            net = ipaddress.ip_network(r, strict=False)
            if not any(net.overlaps(o) for o in own):
                out.setdefault(str(net), []).append(p)
    return {
        r: tuple(KeyHex(p.public_key.lower()) for p in sorted(ps, key=lambda p: p.node_id))
        for r, ps in out.items()
    }


def exit_peer(ds: DesiredState, name: str) -> tuple[KeyHex, str]:
    """(key, "") of the approved exit node called name, or ("", why it cannot be used)."""
    if not name:
        return KeyHex(""), ""
    for p in ds.peers:
        if p.name == name and not p.via_vrouter:
            if p.exit_node:
                return KeyHex(p.public_key.lower()), ""
            return KeyHex(""), f"peer {name!r} is not an approved exit node"
    return KeyHex(""), f"no peer {name!r} in this CVLAN"


class RouteFailover:
    """Tracks the carriers of shared routes and shapes the desired state accordingly."""

    def __init__(self, clock: Clock) -> None:
        self.liveness = HubLiveness(clock)
        self._groups: dict[str, tuple[KeyHex, ...]] = {}

    def set_state(self, ds: DesiredState, local: Iterable[str] = ()) -> None:
        """Take the peers' routes of a new desired state; local: the host's connected networks."""
        self._groups = carriers(ds, local)
        self.liveness.watch({k for ks in self._groups.values() if len(ks) > 1 for k in ks})

    def carrier(self, route: str) -> KeyHex:
        """The peer that carries route now ("" when no peer does)."""
        keys = self._groups.get(route, ())
        return KeyHex(self.liveness.active(keys) if len(keys) > 1 else (keys[0] if keys else ""))

    def table(self) -> dict[str, KeyHex]:
        return {r: self.carrier(r) for r in sorted(self._groups)}

    def shape(self, ds: DesiredState, exit_key: str = "") -> DesiredState:
        """ds with each route in its carrier's allowed IPs, 0.0.0.0/0 on the exit node (exit_key),
        and fast keepalives where this node serves a route a peer serves too."""
        extra: dict[str, list[str]] = {}
        for r, key in self.table().items():
            extra.setdefault(key, []).append(r)
        if exit_key:
            extra.setdefault(exit_key, []).append(EXIT_ROUTE)
        shared = any(r in p.routes for p in ds.peers for r in ds.routes)
        if not extra and not shared:
            return ds
        peers = []
        for p in ds.peers:
            more = extra.get(p.public_key.lower(), [])
            update: dict[str, object] = {}
            if more:
                update["allowed_ips"] = [*p.allowed_ips, *more]
            if shared and (p.keepalive == 0 or p.keepalive > HUB_KEEPALIVE):
                update["keepalive"] = HUB_KEEPALIVE
            peers.append(p.model_copy(update=update) if update else p)
        return ds.model_copy(update={"peers": peers})

    def observe(self, peers: dict[KeyHex, PeerState]) -> bool:
        """Feed the device's counters; True if a route moved to another peer."""
        watched = {k for keys in self._groups.values() if len(keys) > 1 for k in keys}
        for key in sorted(watched):
            p = peers.get(key)
            if p is not None:
                self.liveness.observe(key, p.rx_bytes, p.last_handshake)
        return self.liveness.refresh()

    def take_probes(self) -> set[str]:
        return self.liveness.take_probes()
