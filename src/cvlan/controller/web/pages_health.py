"""The CVLAN health page: who reaches whom, how, at what round trip and loss -- worst first."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from cvlan.controller.health.matrix import STATES
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


WIDTH = 24 * 60
MIN_BAR = 6.0
"""The narrowest bar (6 minutes of the 24 h): a sample taken just now is still seen."""


def timeline(history: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """The 24 h history as bars on a 1,440 x 100 plane (a minute per unit): each sample lasts until
    the next one (the last until now, and at least MIN_BAR), stacked by state, worst at the top."""
    if not history:
        return []
    start = now - dt.timedelta(seconds=health.HISTORY_S)
    xs = [max(0.0, (s["at"] - start).total_seconds() / 60) for s in history]
    ends = [*xs[1:], (now - start).total_seconds() / 60]
    bars = []
    for sample, x, end in zip(history, xs, ends, strict=True):
        total = sum(sample[k] for k in STATES) or 1
        y, segments = 0.0, []
        for state in STATES:
            h = 100 * sample[state] / total
            if h:
                segments.append({"state": state, "y": round(y, 2), "h": round(h, 2), "n": sample[state]})
            y += h
        w = max(end - x, MIN_BAR)
        x = min(x, WIDTH - w)
        bars.append({"x": round(x, 2), "w": round(w, 2), "at": sample["at"], "segments": segments})
    return bars


@page(tenant=True)
async def cvlan_health(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        h = await health.cvlan_health(p.ctx, s, p.who, p.tenant, p.request.match_info["cvlan"])
    bad = [x for x in h["pairs"] if x["state"] in ("down", "lossy", "relay")]
    bars = timeline(h["history"], p.ctx.now())
    return p.render("cvlan_health.html", h=h, grid=grid(h), unhealthy=bad, timeline=bars, nav="cvlans")


def routes(prefix: str) -> list[web.RouteDef]:
    return [web.get(prefix + "/t/{tenant}/cvlans/{cvlan}/health", cvlan_health)]
