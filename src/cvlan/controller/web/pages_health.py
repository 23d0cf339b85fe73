"""The CVLAN health page: who reaches whom, how, at what round trip and loss -- worst first."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cvlan.controller.ops import health
from cvlan.controller.web.core import Page, page


def grid(h: dict[str, Any]) -> list[dict[str, Any]]:
    """The matrix as rows of cells (reporter × peer) in member order; a cell is None on the diagonal."""
    by = {(p["src"], p["dst"]): p for p in h["pairs"]}
    ids = [m["id"] for m in h["members"]]
    return [
        {"member": m, "cells": [None if d == m["id"] else by.get((m["id"], d)) for d in ids]}
        for m in h["members"]
    ]


@page(tenant=True)
async def cvlan_health(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        h = await health.cvlan_health(p.ctx, s, p.who, p.tenant, p.request.match_info["cvlan"])
    bad = [x for x in h["pairs"] if x["state"] in ("down", "lossy", "relay")]
    return p.render("cvlan_health.html", h=h, grid=grid(h), unhealthy=bad, nav="cvlans")


def routes(prefix: str) -> list[web.RouteDef]:
    return [web.get(prefix + "/t/{tenant}/cvlans/{cvlan}/health", cvlan_health)]
