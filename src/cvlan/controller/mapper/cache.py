"""Per-CVLAN peer maps held in memory, versioned, and assembled from pre-encoded pieces.

A poll whose map version equals the CVLAN's current token is answered without touching the
database. Any committed change to a CVLAN (ops.context.bump -> on_cvlan_changed) drops its map and
wakes its long-polls; the next poll loads it again, once, however many members ask at the same time.

Map version token (opaque to nodes, see node.proto NetworkMap.version):
    db_version << 24 | generation (8 bits) << 16 | epoch (16 bits)
db_version is cvlans.version (bumped in the transaction of every change); generation is a
per-process-start counter kept in the database, so a restarted controller never reuses the token
of a different map; epoch counts in-memory changes (endpoints reported by polls, relay map) of the
CVLAN since this process started."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.db.models import (
    Cvlan,
    KeyValue,
    Node,
    NodeRoute,
    Region,
    Relay,
    Tenant,
    Vrouter,
    VrouterCvlan,
)
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.mapper import dnsmap
from cvlan.controller.ops import dns as dns_ops
from cvlan.controller.ops import policy as policy_ops
from cvlan.controller.ops.context import OpsContext
from cvlan.controller.ops.nodes import disabled_error
from cvlan.controller.policy import MemberRef, compile_for_members
from cvlan.controller.vrouting import Hub, direct, hubs_for, node_region
from cvlan.wire import dnsnames, nodeproto
from cvlan.wire.endpoint import is_endpoint
from cvlan.wire.pb import node_pb2 as pb
from cvlan.wire.routes import EXIT_ROUTE

log = logging.getLogger(__name__)

GENERATION_KEY = "mapper_generation"
PendingLookup = Callable[[int], tuple[list[str], str] | None]


@dataclass
class Member:
    """One node of a CVLAN as the map shows it."""

    node_id: int
    tenant_id: int
    name: str
    address: str
    wg_key: bytes
    endpoints: list[str]
    home_relay_region: str
    online: bool
    tags: tuple[str, ...] = ()
    filter_rules: list[pb.FilterRule] = field(default_factory=list)
    chunk: bytes = b""
    self_part: bytes = b""
    region: str = ""
    """vrouting.node_region of this member (set when it is encoded)."""
    chunk_via: bytes = b""
    """This member as a peer reached through the receiver's vrouter (route VIA_VROUTER, no allowed IPs)."""
    hubs: tuple[Hub, ...] = ()
    """vrouting.hubs_for this member, most preferred first (set when it is encoded)."""
    dns_name: str = ""
    """The member's DNS name (wire/dnsnames.py), unique in the CVLAN."""
    dns_part: pb.DnsConfig | None = None
    """Its own part of the map's DnsConfig: whose names resolve for it (mapper/dnsmap.py)."""
    routes: tuple[str, ...] = ()
    """Its approved, advertised subnet routes (ops/subnets.py)."""
    exit_node: bool = False
    """It is an approved exit node that offers itself now."""
    advert: tuple[str, ...] = ()
    """What it advertises as stored (routes and the exit offer): a poll saying the same changes nothing."""


@dataclass
class CvlanMap:
    """The current map of one CVLAN: its members and the encoded pieces every member's map shares."""

    cvlan_id: int
    tenant_id: int
    name: str
    subnet: str
    mode: str
    db_version: int
    token: int
    members: dict[int, Member]
    vrouters: list[pb.VrouterPeer]
    via_vrouter: bool
    common: bytes = b""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    hubs: list[Hub] = field(default_factory=list)
    """The registered vrouters serving the CVLAN (see controller/vrouting.py)."""
    hub_parts: dict[int, bytes] = field(default_factory=dict)
    """vrouter id -> encoded NetworkMap fragment with that vrouter as a VrouterPeer."""
    dns: pb.DnsConfig | None = None
    """The CVLAN's part of every member's DnsConfig (zone, resolver, records, forwarders)."""

    def hub_of(self, mem: Member) -> Hub | None:
        """The member's most preferred hub (None: it has none)."""
        return mem.hubs[0] if mem.hubs else None

    def body_for(self, node_id: int, head: pb.PollResponse) -> bytes:
        """The encoded PollResponse carrying node_id's full map (every member but itself as a peer).

        Per receiver (vrouting.py): its hubs are its vrouter peers, most preferred first (each with
        the CVLAN subnet; the node routes it to one of them at a time), and each peer comes as the
        direct chunk (its /32) or the via-vrouter chunk (no allowed IPs: the hub's subnet wins)."""
        me = self.members[node_id]
        parts = [self.common, me.self_part]
        if not self.hubs:
            parts += [m.chunk for nid, m in self.members.items() if nid != node_id]
            return nodeproto.compose_poll_response(head, parts)
        hub = self.hub_of(me)
        parts += [self.hub_parts[h.vrouter_id] for h in me.hubs]
        for nid, m in self.members.items():
            if nid != node_id:
                ok = direct(self.mode, me.region, hub, m.region, self.hub_of(m))
                parts.append(m.chunk if ok else m.chunk_via)
        return nodeproto.compose_poll_response(head, parts)


class Mapper:
    """Holds the maps, loads them on demand, and wakes long-polls when they change."""

    def __init__(self, ctx: OpsContext, pending_endpoints: PendingLookup | None = None) -> None:
        self.ctx = ctx
        self.generation = 0
        self._pending_endpoints: PendingLookup = pending_endpoints or (lambda _node_id: None)
        """Endpoints reported by polls but not flushed yet: a reload must not fall back to older ones."""
        self._maps: dict[int, CvlanMap] = {}
        self._loading: dict[int, asyncio.Task[CvlanMap]] = {}
        self._change_seq: dict[int, int] = {}
        self._epochs: dict[int, int] = {}
        self._node_cvlan: dict[int, int] = {}
        self._wakers: dict[int, asyncio.Event] = {}
        self.wakes: dict[int, int] = {}
        """How many times each CVLAN's long-polls were woken: a poll parked by a front (lean.py) carries
        the count it was parked at, so that a wake the front heard of first is not missed."""
        self.wake_listeners: set[Callable[[int, int], None]] = set()
        """Told (CVLAN id, wake count) at every wake: the fronts' event streams."""
        self.relay_map = pb.RelayMap()
        self._relay_bytes = b""
        self.loads = 0
        """How many maps were loaded from the database (for tests and metrics)."""
        self.announce_changed: Callable[[set[int]], None] | None = None
        self.announce_endpoints: Callable[[int, int, list[str], str], None] | None = None
        """Set by the fan-out to other controller processes (mapper/fanout.py), when there is one."""

    async def start(self) -> None:
        """Take a new generation number (one write at start) and load the relay map."""
        async with self.ctx.tx() as s:
            row = await s.get(KeyValue, GENERATION_KEY, with_for_update=True)
            if row is None:
                row = KeyValue(key=GENERATION_KEY, value="0")
                s.add(row)
            self.generation = (int(row.value) + 1) & 0xFF
            row.value = str(self.generation)
        await self.refresh_relays()

    # --- invalidation ------------------------------------------------------------------

    def on_changed(self, cvlan_ids: set[int]) -> None:
        """Post-commit hook: drop the maps of changed CVLANs, wake their long-polls, tell the others."""
        self.invalidate(cvlan_ids)
        if self.announce_changed is not None:
            self.announce_changed(cvlan_ids)

    def invalidate(self, cvlan_ids: set[int]) -> None:
        """Drop the maps of these CVLANs and wake their long-polls."""
        for cid in cvlan_ids:
            self._change_seq[cid] = self._change_seq.get(cid, 0) + 1
            self._maps.pop(cid, None)
            self._wake(cid)

    def invalidate_all(self) -> None:
        """Drop every map held and wake every long-poll (changes may have been missed)."""
        self.invalidate(set(self._maps) | set(self._wakers))

    def _wake(self, cid: int) -> None:
        ev = self._wakers.pop(cid, None)
        if ev is not None:
            ev.set()
        n = self.wakes[cid] = self.wakes.get(cid, 0) + 1
        for tell in list(self.wake_listeners):
            tell(cid, n)

    def wake_all(self) -> None:
        for cid in list(self._wakers):
            self._wake(cid)

    def is_current(self, m: CvlanMap) -> bool:
        """Whether m is still its CVLAN's map: no change dropped it since it was read."""
        return self._maps.get(m.cvlan_id) is m

    def waiter(self, cid: int) -> asyncio.Event:
        """An event set at the next change of the CVLAN (shared by all its long-polls)."""
        ev = self._wakers.get(cid)
        if ev is None:
            ev = self._wakers[cid] = asyncio.Event()
        return ev

    def _next_token(self, cid: int, db_version: int) -> int:
        e = (self._epochs.get(cid, 0) + 1) & 0xFFFF
        self._epochs[cid] = e
        return (db_version << 24) | (self.generation << 16) | e

    # --- relay map -----------------------------------------------------------------------

    async def refresh_relays(self) -> bool:
        """Reload the relay map; if it changed, every map changes. Returns whether it changed."""
        async with self.ctx.tx() as s:
            rows = (
                await s.execute(select(Region.name, Relay).outerjoin(Relay).order_by(Region.name, Relay.name))
            ).all()
        regions: dict[str, pb.RelayRegion] = {}
        for region, relay in rows:
            r = regions.setdefault(region, pb.RelayRegion(name=region))
            if relay is not None:
                r.relays.append(pb.RelayNode(name=relay.name, url=relay.url, stun=relay.stun))
        rm = pb.RelayMap(regions=list(regions.values()))
        raw = rm.SerializeToString(deterministic=True)
        if raw == self._relay_bytes:
            return False
        self.relay_map, self._relay_bytes = rm, raw
        # Every map embeds the relay map: give each cached map a new token in memory (no reload of
        # thousands of CVLANs from the database), and make in-flight loads load again.
        for cid in list(self._loading):
            self._change_seq[cid] = self._change_seq.get(cid, 0) + 1
        for cid, m in list(self._maps.items()):
            self._retoken(m)
            self._wake(cid)
        return True

    # --- lookups ----------------------------------------------------------------------------

    async def map_for_node(
        self, node_id: int, tenant_id: int, wg_key: bytes, cvlan_hint: int | None = None
    ) -> tuple[CvlanMap, Member]:
        """The map of the node's CVLAN and the node's entry. UNAUTHENTICATED if it was deleted,
        FORBIDDEN (reason "disabled") while it is disabled.

        cvlan_hint (the CVLAN in the node's certificate) spares a database lookup per node after a
        restart: loading that CVLAN's map indexes all its members at once."""
        found = self.cached_for_node(node_id, tenant_id, wg_key, cvlan_hint)
        if found is not None:
            return found
        cid = self._node_cvlan.get(node_id, cvlan_hint)
        if cid is not None:
            try:
                m = await self.get(cid)
            except DomainError as e:
                if e.kind == Kind.UNAVAILABLE:
                    raise
                m = None  # that CVLAN is gone (the node may have moved): look the node up
            me = m.members.get(node_id) if m is not None else None
            if m is not None and me is not None and me.wg_key == wg_key and me.tenant_id == tenant_id:
                return m, me
        cid = await self._lookup_node(node_id, tenant_id, wg_key)
        m = await self.get(cid)
        me = m.members.get(node_id)
        if me is None or me.wg_key != wg_key:
            raise revoked(node_id)
        return m, me

    def cached_for_node(
        self, node_id: int, tenant_id: int, wg_key: bytes, cvlan_hint: int | None = None
    ) -> tuple[CvlanMap, Member] | None:
        """map_for_node without waiting: the answer if the node's map is loaded, else None."""
        cid = self._node_cvlan.get(node_id, cvlan_hint)
        m = self._maps.get(cid) if cid is not None else None
        if m is None:
            return None
        me = m.members.get(node_id)
        if me is None or me.wg_key != wg_key or me.tenant_id != tenant_id:
            return None
        return m, me

    async def _lookup_node(self, node_id: int, tenant_id: int, wg_key: bytes) -> int:
        async with self.ctx.tx() as s:
            row = (
                await s.execute(
                    select(Node.cvlan_id, Node.disabled, Node.wg_public_key).where(
                        Node.id == node_id, Node.tenant_id == tenant_id
                    )
                )
            ).first()
        if row is None or row.disabled or row.wg_public_key != wg_key:
            self._node_cvlan.pop(node_id, None)
            if row is not None and row.disabled and row.wg_public_key == wg_key:
                raise disabled_error(node_id)
            raise revoked(node_id)
        return int(row.cvlan_id)

    async def get(self, cid: int) -> CvlanMap:
        """The current map of a CVLAN, loading it (once for all concurrent callers) if needed.

        The load runs in its own task, so a caller that goes away (client disconnect) does not
        cancel it for the others."""
        m = self._maps.get(cid)
        if m is not None:
            return m
        task = self._loading.get(cid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load_fresh(cid), name=f"map-load-{cid}")
            self._loading[cid] = task
            task.add_done_callback(functools.partial(self._loaded, cid))
        return await asyncio.shield(task)

    def _loaded(self, cid: int, task: asyncio.Task[CvlanMap]) -> None:
        if self._loading.get(cid) is task:
            del self._loading[cid]
        if not task.cancelled():
            task.exception()  # retrieved here; callers re-raise it

    async def _load_fresh(self, cid: int) -> CvlanMap:
        """Load, and load again if the CVLAN changed while loading (never cache a map older than a
        change that has already been announced)."""
        for _ in range(5):
            seq = self._change_seq.get(cid, 0)
            m = await self._load(cid)
            if self._change_seq.get(cid, 0) == seq:
                self._maps[cid] = m
                return m
        return m  # changing faster than it loads: serve this one uncached, the next poll reloads

    async def _load(self, cid: int) -> CvlanMap:
        async with self.ctx.tx() as s:
            c = await s.get(Cvlan, cid)
            if c is None:
                raise DomainError(
                    Kind.UNAUTHENTICATED, "the node's CVLAN has been deleted; re-enrol the node"
                )
            nodes = list(await s.scalars(select(Node).where(Node.cvlan_id == cid, Node.disabled.is_(False))))
            vrs = await _vrouters(s, c)
            doc = await policy_ops.load(s, cid)
            tenant_name = await s.scalar(select(Tenant.name).where(Tenant.id == c.tenant_id)) or ""
            records, forwarders = await dns_ops.load_for_map(s, cid)
            adverts = await _adverts(s, cid)
        self.loads += 1
        now = self.ctx.now()
        offline = self.ctx.settings.offline_after_s
        members: dict[int, Member] = {
            n.id: Member(
                node_id=n.id,
                tenant_id=n.tenant_id,
                name=n.name,
                address=n.address,
                wg_key=n.wg_public_key,
                endpoints=list(n.endpoints or []),
                home_relay_region=n.home_relay_region,
                online=n.last_seen is not None and (now - n.last_seen).total_seconds() < offline,
                tags=tuple(n.tags or ()),
            )
            for n in nodes
        }
        for nid, (advert, usable) in adverts.items():
            if nid in members:
                members[nid].advert = advert
                members[nid].routes = tuple(p for p in usable if p != EXIT_ROUTE)
                members[nid].exit_node = EXIT_ROUTE in usable
        refs = [
            MemberRef(mem.node_id, mem.name, mem.address, mem.tags, mem.routes) for mem in members.values()
        ]
        for nid, rules in compile_for_members(doc, refs, c.subnet).items():
            members[nid].filter_rules = [pb.FilterRule(**r) for r in rules]
        zone = dnsnames.zone(c.name, tenant_name, self.ctx.settings.dns_domain)
        labels = dnsnames.assign_labels((mem.node_id, mem.name) for mem in members.values())
        parts = dnsmap.receiver_parts(list(members.values()))
        for nid, mem in members.items():
            mem.dns_name, mem.dns_part = f"{labels[nid]}.{zone}", parts[nid]
        m = CvlanMap(
            cvlan_id=c.id,
            tenant_id=c.tenant_id,
            name=c.name,
            subnet=c.subnet,
            mode=c.mode,
            db_version=c.version,
            token=0,
            members=members,
            vrouters=vrs,
            via_vrouter=c.mode == "hub" and any(v.wg_public_key for v in vrs),
            dns=dnsmap.cvlan_part(zone, records, forwarders),
        )
        for v in vrs:
            if len(v.wg_public_key) == 32:  # unregistered vrouters are left out of maps
                m.hubs.append(Hub(v.vrouter_id, v.name, v.region))
                m.hub_parts[v.vrouter_id] = pb.NetworkMap(vrouters=[v]).SerializeToString()
        self._retoken(m)
        for mem in members.values():
            pending = self._pending_endpoints(mem.node_id)
            if pending is not None:
                mem.endpoints, mem.home_relay_region = pending
            self._encode_member(m, mem)
            self._node_cvlan[mem.node_id] = cid
        return m

    def _retoken(self, m: CvlanMap) -> None:
        m.token = self._next_token(m.cvlan_id, m.db_version)
        m.common = pb.NetworkMap(
            version=m.token, relay_map=self.relay_map, cvlan_subnet=m.subnet, mode=m.mode, dns=m.dns
        ).SerializeToString()  # vrouters: per receiver (hub_parts), see body_for

    def _encode_member(self, m: CvlanMap, mem: Member) -> None:
        addr = f"{mem.address}/32"
        peer = pb.Peer(
            node_id=mem.node_id,
            name=mem.name,
            wg_public_key=mem.wg_key,
            address=addr,
            endpoints=mem.endpoints,
            home_relay_region=mem.home_relay_region,
            online=mem.online,
            allowed_ips=[addr],
            route=pb.PEER_ROUTE_DIRECT,
            dns_name=mem.dns_name,
            routes=mem.routes,
            exit_node=mem.exit_node,
        )
        mem.chunk = nodeproto.peer_chunk(peer)
        mem.region = node_region(mem.tags, mem.home_relay_region)
        mem.hubs = hubs_for(mem.node_id, mem.region, m.mode, m.hubs)
        del peer.allowed_ips[:]
        peer.route = pb.PEER_ROUTE_VIA_VROUTER
        mem.chunk_via = nodeproto.peer_chunk(peer)
        mem.self_part = pb.NetworkMap(
            self=pb.SelfNode(
                node_id=mem.node_id,
                name=mem.name,
                address=addr,
                tenant_id=m.tenant_id,
                cvlan_id=m.cvlan_id,
                cvlan_name=m.name,
                dns_name=mem.dns_name,
                routes=mem.routes,
                exit_node=mem.exit_node,
            ),
            filter_rules=mem.filter_rules,
            dns=mem.dns_part,
        ).SerializeToString()

    # --- in-memory changes -------------------------------------------------------------------

    def update_endpoints(
        self,
        m: CvlanMap,
        me: Member,
        endpoints: Iterable[str] | None,
        region: str | None,
        announce: bool = True,
    ) -> bool:
        """Apply what a poll reported. If the node's peers would see something new, the CVLAN gets a new
        token and its long-polls wake. Returns whether anything changed."""
        eps = list(endpoints) if endpoints is not None else me.endpoints
        reg = region if region is not None else me.home_relay_region
        if eps == me.endpoints and reg == me.home_relay_region:
            return False
        me.endpoints, me.home_relay_region = eps, reg
        self._encode_member(m, me)
        if self._maps.get(m.cvlan_id) is m:
            self._retoken(m)
            self._wake(m.cvlan_id)
        if announce and self.announce_endpoints is not None:
            self.announce_endpoints(m.cvlan_id, me.node_id, eps, reg)
        return True

    def apply_endpoints(self, cvlan_id: int, node_id: int, endpoints: list[str], region: str) -> None:
        """Endpoints another controller process received: update the cached map if there is one."""
        m = self._maps.get(cvlan_id)
        me = m.members.get(node_id) if m is not None else None
        if m is not None and me is not None:
            self.update_endpoints(m, me, endpoints, region, announce=False)


def revoked(node_id: int) -> DomainError:
    return DomainError(
        Kind.UNAUTHENTICATED,
        f"node {node_id} has been deleted; re-enrol it with a new token",
        {"reason": "revoked"},
    )


async def _vrouters(s: AsyncSession, c: Cvlan) -> list[pb.VrouterPeer]:
    rows = (
        await s.execute(
            select(Vrouter, Region.name)
            .join(VrouterCvlan, VrouterCvlan.vrouter_id == Vrouter.id)
            .join(Region, Region.id == Vrouter.region_id)
            .where(VrouterCvlan.cvlan_id == c.id)
            .order_by(Vrouter.id)
        )
    ).all()
    return [
        pb.VrouterPeer(
            vrouter_id=v.id,
            name=v.name,
            region=rn,
            wg_public_key=v.wg_public_key or b"",
            endpoint=v.endpoint,
            allowed_ips=[c.subnet],
        )
        for v, rn in rows
    ]


async def _adverts(s: AsyncSession, cid: int) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """node id -> (what it advertises, what of that is approved and usable), for the CVLAN's nodes."""
    rows = await s.execute(
        select(NodeRoute.node_id, NodeRoute.prefix, NodeRoute.approved, NodeRoute.refused)
        .join(Node, Node.id == NodeRoute.node_id)
        .where(Node.cvlan_id == cid, NodeRoute.advertised.is_(True))
        .order_by(NodeRoute.node_id, NodeRoute.prefix)
    )
    out: dict[int, tuple[list[str], list[str]]] = {}
    for nid, prefix, approved, refused in rows.all():
        adv, ok = out.setdefault(nid, ([], []))
        adv.append(prefix)
        if approved and not refused:
            ok.append(prefix)
    return {nid: (_advert_order(adv), tuple(ok)) for nid, (adv, ok) in out.items()}


def _advert_order(prefixes: list[str]) -> tuple[str, ...]:
    """As a node sends them: routes in address order, the exit offer last (ops/subnets.advert_prefixes)."""
    return (
        *sorted((p for p in prefixes if p != EXIT_ROUTE), key=_net_key),
        *(p for p in prefixes if p == EXIT_ROUTE),
    )


def _net_key(prefix: str) -> tuple[int, int]:
    import ipaddress

    n = ipaddress.ip_network(prefix)
    return int(n.network_address), n.prefixlen


def valid_endpoint(text: str) -> bool:
    """ip:port with an IPv4 or [IPv6] address and a port in 1..65535."""
    return is_endpoint(text)
