"""What nodes advertise (subnet routes, exit-node offer) as their polls report it: compared in memory
with the map's copy, and written to the database only when it changes (ops/subnets.store_advert).

A poll is answered without waiting for the write; the write bumps the CVLAN's version, which wakes
the long-polls of its members (the advertising node's too) with the new map."""

from __future__ import annotations

import asyncio
import logging

from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.mapper.cache import Member
from cvlan.controller.ops import subnets
from cvlan.controller.ops.context import OpsContext
from cvlan.wire.pb import node_pb2 as pb
from cvlan.wire.routes import RouteError, parse_routes

log = logging.getLogger(__name__)


def advert_of(msg: pb.RouteAdvert) -> tuple[str, ...]:
    """The stored form of an advert; INVALID for a route that is not one."""
    try:
        routes = parse_routes(list(msg.routes))
    except RouteError as e:
        raise DomainError(Kind.INVALID, str(e), {"field": "route_advert"}) from None
    return subnets.advert_prefixes(routes, msg.exit_node)


class AdvertWriter:
    """Writes changed adverts in the background, one task per change."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, me: Member, msg: pb.RouteAdvert) -> None:
        """Take the advert of a poll; schedule its write if it differs from what the map holds."""
        if tuple(msg.routes) + (("0.0.0.0/0",) if msg.exit_node else ()) == me.advert:
            return  # the common case: the node repeats what it said
        advert = advert_of(msg)
        if advert == me.advert:
            return
        me.advert = advert  # later polls saying the same schedule nothing more
        task = asyncio.get_running_loop().create_task(self._write(me, advert), name=f"advert-{me.node_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, me: Member, advert: tuple[str, ...]) -> None:
        try:
            async with self.ctx.tx() as s:
                await subnets.store_advert(self.ctx, s, me.node_id, advert)
        except DomainError as e:
            me.advert = ()  # the next poll tries again
            log.warning(
                "routes advertised by a node not stored", extra={"node_id": me.node_id, "reason": e.message}
            )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
