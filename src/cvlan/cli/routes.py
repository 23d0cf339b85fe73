"""`cvlan route ...`: subnet routes and exit nodes of a tenant's nodes (docs/ROUTES.md,
docs/EXIT-NODES.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cvlan.cli.http import Client

Cmd = Callable[[Client, argparse.Namespace], Any]
Leaf = Callable[..., argparse.ArgumentParser]
ROUTE_COLS = ["node", "cvlan", "route", "state", "primary", "reason"]
RULE_COLS = ["id", "kind", "prefix", "tag"]


def _t(ns: argparse.Namespace) -> str:
    return f"/api/v1/tenants/{quote(ns.tenant, safe='')}"


def route_list(c: Client, ns: argparse.Namespace) -> Any:
    out = c.call("GET", _t(ns) + "/routes", None, {"cvlan": ns.cvlan, "node": ns.node})
    rows = [{**r, "route": "exit node" if r["exit_node"] else r["route"]} for r in out["items"]]
    return rows, ROUTE_COLS


def _approval(c: Client, ns: argparse.Namespace, verb: str) -> Any:
    body = {"routes": ns.routes or [], "exit_node": ns.exit_node}
    out = c.call("POST", _t(ns) + f"/nodes/{quote(ns.node, safe='')}/routes/{verb}", body)
    rows = [{**r, "route": "exit node" if r["exit_node"] else r["route"]} for r in out["items"]]
    return rows, ROUTE_COLS


def route_approve(c: Client, ns: argparse.Namespace) -> Any:
    return _approval(c, ns, "approve")


def route_revoke(c: Client, ns: argparse.Namespace) -> Any:
    return _approval(c, ns, "revoke")


def rule_list(c: Client, ns: argparse.Namespace) -> Any:
    out = c.call("GET", _t(ns) + f"/cvlans/{quote(ns.cvlan, safe='')}/route-rules")
    return out["items"], RULE_COLS


def rule_add(c: Client, ns: argparse.Namespace) -> Any:
    body = {"kind": ns.kind, "prefix": ns.prefix or "", "tag": ns.tag or ""}
    return c.call("POST", _t(ns) + f"/cvlans/{quote(ns.cvlan, safe='')}/route-rules", body)


def rule_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/cvlans/{quote(ns.cvlan, safe='')}/route-rules/{quote(ns.id, safe='')}")
    return {"deleted": ns.id}


def summary(items: list[dict[str, Any]]) -> str:
    """One line for `cvlan node show`: each route with its state ('-' when there are none)."""
    parts = []
    for r in items:
        what = "exit node" if r["exit_node"] else r["route"]
        state = r["state"] + (" (primary)" if r["primary"] and r["advertisers"] > 1 else "")
        state += " (standby)" if r["state"] == "approved" and not r["primary"] else ""
        parts.append(f"{what} {state}" + (f": {r['reason']}" if r["reason"] else ""))
    return "; ".join(parts) or "-"


def register(
    group: Callable[[str, str], argparse._SubParsersAction[argparse.ArgumentParser]], leaf: Leaf
) -> None:
    """Add the `route` command group to the cvlan parser."""
    g = group("route", "subnet routes and exit nodes advertised by nodes (approval by tenant admins)")
    x = leaf(g, "list", route_list, "routes and exit-node offers with their state and primary")
    x.add_argument("--cvlan")
    x.add_argument("--node")
    for verb, fn, text in (
        ("approve", route_approve, "approve routes a node advertises (admin)"),
        ("revoke", route_revoke, "revoke route approvals of a node (admin)"),
    ):
        x = leaf(g, verb, fn, text)
        x.add_argument("node")
        x.add_argument("routes", nargs="*", metavar="CIDR", help="advertised routes, e.g. 10.1.0.0/24")
        x.add_argument("--exit-node", action="store_true", help="also the node's exit-node offer")
    g = group("route-rule", "auto-approval rules of a CVLAN for routes and exit nodes")
    leaf(g, "list", rule_list, "list the rules of a CVLAN").add_argument("--cvlan", required=True)
    x = leaf(g, "add", rule_add, "approve matching routes (kind route) or exit offers (kind exit) at once")
    x.add_argument("--cvlan", required=True)
    x.add_argument("kind", choices=("route", "exit"))
    x.add_argument("prefix", nargs="?", help="for kind route: routes within this CIDR, e.g. 10.0.0.0/8")
    x.add_argument("--tag", help="only nodes with this tag")
    x = leaf(g, "delete", rule_delete, "delete a rule (what it approved stays approved)")
    x.add_argument("--cvlan", required=True)
    x.add_argument("id")
