"""Policy editing on a CVLAN and the tenant's denied traffic."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cvlan.common.durations import parse_duration
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import cvlans, policy
from cvlan.controller.web.core import Form, Page, page

SINCE_CHOICES = (("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"))
EXAMPLE = {"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "proto": "tcp", "ports": ["5432"]}]}


async def _policy_page(p: Page, ref: str, form: Form | None = None, status: int = 200) -> web.Response:
    assert p.tenant is not None
    async with p.ctx.tx() as s:
        c, pol = await policy.get(s, p.who, p.tenant, ref)
        flows, flow_total = await policy.denied_flows(s, p.who, p.tenant, str(c.id), None, 20, 0)
    text = pretty(pol.document) if pol else ""
    return p.render(
        "policy.html",
        status=status,
        cvlan=c,
        policy=pol,
        effect=policy.view(c, pol)["effect"],
        flows=flows,
        flow_total=flow_total,
        example=pretty(EXAMPLE),
        form=form or Form({"document": text}),
        nav="cvlans",
    )


@page(tenant=True)
async def policy_show(p: Page) -> web.StreamResponse:
    return await _policy_page(p, p.request.match_info["cvlan"])


@page(tenant=True)
async def policy_save(p: Page) -> web.StreamResponse:
    """Replace the policy with the posted JSON document, or clear it when the form says so."""
    assert p.tenant is not None
    ref = p.request.match_info["cvlan"]
    f = await p.form()
    try:
        async with p.ctx.tx() as s:
            if f.get("clear"):
                await policy.clear(p.ctx, s, p.who, p.tenant, ref)
                msg = "Policy removed: all members of this CVLAN reach each other again."
            else:
                doc = _parse(f.get("document"))
                _, _, changed = await policy.set_(p.ctx, s, p.who, p.tenant, ref, doc)
                msg = "Policy saved; members receive it with their next map." if changed else "No change."
    except DomainError as e:
        if e.kind in (Kind.FORBIDDEN, Kind.NOT_FOUND):
            raise
        f.errors["document"] = e.message[:1].upper() + e.message[1:]
        return await _policy_page(p, ref, f, 422)
    return p.redirect(p.url(f"cvlans/{ref}/policy"), msg)


DEFAULTS = {"action": "accept", "proto": "any", "ports": [], "comment": ""}


def _short(rule: Any) -> Any:
    """A rule without the fields that only repeat their defaults (the stored form spells them out)."""
    if not isinstance(rule, dict):
        return rule
    return {k: v for k, v in rule.items() if k not in DEFAULTS or DEFAULTS[k] != v}


def pretty(doc: dict[str, Any]) -> str:
    """A policy with one rule per line, the way people write and review them."""
    rules = doc.get("rules") or []
    others = {k: v for k, v in doc.items() if k != "rules"}
    lines = [json.dumps(_short(r), separators=(", ", ": ")) for r in rules]
    body = ",\n    ".join(lines)
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in others.items())
    return "{\n" + head + '  "rules": [\n    ' + body + "\n  ]\n}" if lines else json.dumps(doc, indent=2)


def _parse(text: str) -> Any:
    if not text:
        raise DomainError(Kind.INVALID, "the policy is empty: write a document, or use Remove policy")
    try:
        return json.loads(text)
    except ValueError as e:
        raise DomainError(Kind.INVALID, f"policy is not valid JSON: {e}") from e


@page(tenant=True)
async def denied_list(p: Page) -> web.StreamResponse:
    assert p.tenant is not None
    q = p.request.query
    filters = {"cvlan": q.get("cvlan", ""), "since": q.get("since", "")}
    since = None
    if filters["since"] in dict(SINCE_CHOICES):
        since = p.ctx.now() - parse_duration(filters["since"])
    else:
        filters["since"] = ""
    async with p.ctx.tx() as s:
        all_cvlans, _ = await cvlans.list_(s, p.who, p.tenant, 1000, 0)
        names = {c.name for c, _ in all_cvlans}
        ref = filters["cvlan"] if filters["cvlan"] in names else None
        flows, total = await policy.denied_flows(s, p.who, p.tenant, ref, since, 500, 0)
    return p.render(
        "denied.html",
        flows=flows,
        total=total,
        cvlans=sorted(names),
        filters=filters,
        since_choices=SINCE_CHOICES,
        nav="denied",
    )


def routes(prefix: str) -> list[web.RouteDef]:
    t = prefix + "/t/{tenant}"
    return [
        web.get(t + "/cvlans/{cvlan}/policy", policy_show),
        web.post(t + "/cvlans/{cvlan}/policy", policy_save),
        web.get(t + "/denied", denied_list),
    ]
