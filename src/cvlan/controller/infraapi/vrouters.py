"""The controller's API for vrouters: bootstrap with a token, then poll the desired state.

  GET  /v1/vrouter/ca        the CA certificate (public; the vrouter checks it against its --ca-pin)
  POST /v1/vrouter/register  {token, wg_public_key (hex), csr_pem} -> client certificate, CA, own record
  POST /v1/vrouter/poll      mutual TLS with the vrouter certificate; {version, long_poll_s} ->
                             {unchanged, version, state}; held up to long_poll_s while unchanged

The desired state (JSON, see docs/VROUTER.md) is built from the same in-memory CVLAN maps the
nodes get theirs from, with the same routing rule (controller/vrouting.py), so both sides agree
which members go through which vrouter:

  {"vrouter": {"id", "name", "region", "endpoint"},
   "cvlans": [{"id", "tenant_id", "name", "subnet", "mode",
               "members": [{"node_id", "name", "key", "address", "endpoints", "region",
                            "hub", "hubs", "served", "filter_rules"}]}],
   "vrouters": [{"id", "name", "region", "key", "endpoint", "allowed_ips"}]}

"hubs" are the ids of the vrouters a member may use, most preferred first ("hub": the name of
the first); "served" members have this vrouter among them (it is their WireGuard peer). The
vrouter routes each member's /32 to the member's first alive hub (itself: the member's own peer),
the same choice the member makes (dataplane/hubchoice.py). "vrouters" are the other hubs of the
same CVLANs; their "allowed_ips" list the /32s of the members that prefer them. "filter_rules"
are the member's compiled inbound policy (empty: allow the CVLAN), enforced again in the
vrouter's forward chain. The version is opaque: equal versions mean identical states.

A bootstrap token stays valid until the vrouter is deleted (as for relays), so a vrouter that lost
its state dir registers again; each registration replaces the certificate serial and WireGuard key
the controller accepts from it, and every CVLAN it serves gets a new map.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
from typing import Any

from aiohttp import web
from pydantic import Field

from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.db.models import Vrouter
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_KEY, CTX_KEY
from cvlan.controller.infraapi.common import In, ca_handler, caller, certify, read_body
from cvlan.controller.mapper.cache import CvlanMap, Mapper, Member
from cvlan.controller.ops import infra
from cvlan.controller.ops.context import OpsContext, bump
from cvlan.wire.ids import CvlanId
from cvlan.wire.pb import node_pb2 as pb

VROUTER_CERT_LIFETIME = dt.timedelta(days=30)
MAX_LONG_POLL_S = 60
RECHECK_S = 1.0
POLL_INTERVAL_S = 10
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class RegisterIn(In):
    token: str = Field(max_length=200)
    wg_public_key: str = Field(max_length=64)
    """Hex of the vrouter's 32-byte WireGuard public key (the private key never leaves it)."""
    csr_pem: str = Field(max_length=16384)


class PollIn(In):
    version: str = Field(default="", max_length=64)
    """The state version the vrouter holds; "" for none."""
    long_poll_s: int = Field(default=0, ge=0, le=3600)


class VrouterApi:
    """Handlers plus the change signal long-polls wait on."""

    def __init__(self, ctx: OpsContext, ca: CertificateAuthority, mapper: Mapper) -> None:
        self.ctx, self.ca, self.mapper = ctx, ca, mapper
        self._changed = asyncio.Event()
        ctx.on_cvlan_changed.append(self._on_changed)

    def _on_changed(self, _cvlans: set[int]) -> None:
        # Any committed CVLAN change (attach, detach, members, registration of a vrouter) wakes all
        # vrouter long-polls: an attach changes a CVLAN the vrouter did not serve a moment ago.
        # Each re-checks its version (cheap: map tokens) at most once per RECHECK_S.
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def register(self, request: web.Request) -> web.Response:
        body: RegisterIn = await read_body(request, RegisterIn)
        if not _HEX64.fullmatch(body.wg_public_key):
            raise DomainError(
                Kind.INVALID, "wg_public_key: expected 64 hex characters", {"field": "wg_public_key"}
            )
        key = bytes.fromhex(body.wg_public_key)
        async with self.ctx.tx() as s:
            vr = await infra.by_token(s, Vrouter, body.token)
            pems = certify(self.ca, vr, body.csr_pem, VROUTER_CERT_LIFETIME, self.ctx.now())
            if vr.wg_public_key != key:
                vr.wg_public_key = key
                for c in await infra.served(s, vr.id):
                    bump(s, c)
            region = await infra.region_name(s, vr.region_id)
            out = {
                "vrouter_id": vr.id,
                "name": vr.name,
                "region": region,
                "endpoint": vr.endpoint,
                **pems,
                "poll_interval_s": POLL_INTERVAL_S,
            }
        return web.json_response(out)

    async def poll(self, request: web.Request) -> web.Response:
        body: PollIn = await read_body(request, PollIn)
        async with self.ctx.tx() as s:
            vr = await caller(s, request, Vrouter)
            vr.last_seen = self.ctx.now()
            vid = vr.id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(body.long_poll_s, MAX_LONG_POLL_S)
        while True:
            # Take the wake-up events before reading the maps, so a change in between is not missed.
            waits = [self._changed]
            me, maps, cids = await self.current(vid)
            waits += [self.mapper.waiter(cid) for cid in cids]
            version = state_version(me, maps)
            left = deadline - loop.time()
            if version != body.version or left <= 0:
                break
            tasks = [asyncio.ensure_future(ev.wait()) for ev in waits]
            try:
                await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
            # Changes come in bursts (a registration storm): re-check at most once per RECHECK_S.
            await asyncio.sleep(max(0.0, min(RECHECK_S, deadline - loop.time())))
        if version == body.version:
            return web.json_response(
                {"unchanged": True, "version": version, "poll_interval_s": POLL_INTERVAL_S}
            )
        state = build_state(me, maps)
        out = {"unchanged": False, "version": version, "state": state, "poll_interval_s": POLL_INTERVAL_S}
        return web.json_response(out)

    async def desired(self, vid: int) -> tuple[dict[str, Any], list[CvlanId]]:
        """The vrouter's desired state and the ids of the CVLANs it serves."""
        me, maps, cids = await self.current(vid)
        return build_state(me, maps), cids

    async def current(self, vid: int) -> tuple[dict[str, Any], list[CvlanMap], list[CvlanId]]:
        """The vrouter's own record, the current maps of the CVLANs it serves, and their ids."""
        async with self.ctx.tx() as s:
            row = await infra.vrouter_with_region(s, vid)
            if row is None:
                raise DomainError(Kind.UNAUTHENTICATED, "the vrouter has been deleted")
            vr, region = row
            me = {"id": vr.id, "name": vr.name, "region": region, "endpoint": vr.endpoint}
            cids = sorted(c.id for c in await infra.served(s, vid))
        maps = []
        for cid in cids:
            try:
                maps.append(await self.mapper.get(cid))
            except DomainError:
                continue  # deleted since: its attachment is gone with it
        return me, maps, cids


def build_state(me: dict[str, Any], maps: list[CvlanMap]) -> dict[str, Any]:
    """The desired state of vrouter `me` for the CVLAN maps it serves (pure)."""
    cvlans: list[dict[str, Any]] = []
    others: dict[int, dict[str, Any]] = {}
    for m in maps:
        by_id = {v.vrouter_id: v for v in m.vrouters}
        members = []
        for mem in sorted(m.members.values(), key=lambda x: x.node_id):
            addr = f"{mem.address}/32"
            members.append(_member_state(mem, addr, me["id"]))
            for i, h in enumerate(mem.hubs):
                if h.vrouter_id != me["id"]:
                    o = others.setdefault(h.vrouter_id, _vrouter_state(by_id[h.vrouter_id]))
                    if i == 0:
                        o["allowed_ips"].append(addr)
        cvlans.append(
            {
                "id": m.cvlan_id,
                "tenant_id": m.tenant_id,
                "name": m.name,
                "subnet": m.subnet,
                "mode": m.mode,
                "members": members,
            }
        )
    vrouters = [others[k] for k in sorted(others)]
    for o in vrouters:
        o["allowed_ips"].sort()
    return {"vrouter": me, "cvlans": cvlans, "vrouters": vrouters}


def _member_state(mem: Member, addr: str, vid: int) -> dict[str, Any]:
    return {
        "node_id": mem.node_id,
        "name": mem.name,
        "key": mem.wg_key.hex(),
        "address": addr,
        "endpoints": list(mem.endpoints),
        "region": mem.region,
        "hub": mem.hubs[0].name if mem.hubs else "",
        "hubs": [h.vrouter_id for h in mem.hubs],
        "served": any(h.vrouter_id == vid for h in mem.hubs),
        "filter_rules": [
            {"action": r.action, "src": list(r.src), "proto": r.proto, "ports": list(r.ports)}
            for r in mem.filter_rules
        ],
    }


def _vrouter_state(v: pb.VrouterPeer) -> dict[str, Any]:
    return {
        "id": v.vrouter_id,
        "name": v.name,
        "region": v.region,
        "key": v.wg_public_key.hex(),
        "endpoint": v.endpoint,
        "allowed_ips": [],
    }


def state_version(me: dict[str, Any], maps: list[CvlanMap]) -> str:
    """Opaque: equal versions mean the same state. Built from the maps' tokens (which change with
    every change of a map), so an unchanged poll costs no state assembly."""
    raw = json.dumps([me, [(m.cvlan_id, m.token) for m in maps]], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


VROUTERAPI_KEY = web.AppKey("vrouterapi", VrouterApi)


def install(app: web.Application, mapper: Mapper) -> VrouterApi:
    """Mount the vrouter API on the controller application; it reads the node API's maps (mapper)."""
    api = VrouterApi(app[CTX_KEY], app[CA_KEY], mapper)
    app[VROUTERAPI_KEY] = api
    app.router.add_get("/v1/vrouter/ca", ca_handler)
    app.router.add_post("/v1/vrouter/register", api.register)
    app.router.add_post("/v1/vrouter/poll", api.poll)
    return api
