"""cvlan: the admin CLI over the management REST API.

Server and token come from --server/--token, else CVLAN_SERVER/CVLAN_TOKEN, else the admin.conf
given by --config or CVLAN_CONFIG (written by the controller on first start). Flags win.
Exit status: 0 success, 2 usage error, 1 any other failure (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cvlan.cli import dnscmd, login, table
from cvlan.cli import routes as routes_cli
from cvlan.cli.http import ApiError, Client
from cvlan.cli.table import print_table
from cvlan.common import adminconf
from cvlan.common.version import add_version_flag

Cmd = Callable[[Client, argparse.Namespace], Any]


def _t(ns: argparse.Namespace) -> str:
    return f"/api/v1/tenants/{quote(ns.tenant, safe='')}"


def _q(s: str) -> str:
    return quote(s, safe="")


# Each command returns (data, columns) for listings, a dict for single objects, or None.
def tenant_create(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", "/api/v1/tenants", {"name": ns.name, "display_name": ns.display_name or ""})


def tenant_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages("/api/v1/tenants"), ["id", "name", "display_name", "created_at"]


def tenant_show(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("GET", f"/api/v1/tenants/{_q(ns.name)}")


def tenant_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", f"/api/v1/tenants/{_q(ns.name)}")
    return {"deleted": ns.name}


def cvlan_create(c: Client, ns: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": ns.name, "mode": ns.mode}
    if ns.subnet:
        body["subnet"] = ns.subnet
    return c.call("POST", _t(ns) + "/cvlans", body)


def cvlan_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages(_t(ns) + "/cvlans"), ["id", "name", "subnet", "mode", "nodes", "version"]


def cvlan_show(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("GET", _t(ns) + f"/cvlans/{_q(ns.name)}")


HEALTH_COLS = ["from", "to", "state", "path", "rtt", "loss", "handshake"]


def health_row(p: dict[str, Any]) -> dict[str, Any]:
    """One pair of a reachability matrix for the terminal."""
    path = p["path"] + (f" {p['relay_region']}" if p.get("relay_region") else "")
    return {
        "from": p.get("src_name", p.get("src")),
        "to": p.get("dst_name", p.get("dst")),
        "state": p.get("state", "?"),
        "path": path,
        "rtt": "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f} ms",
        "loss": "-" if p.get("loss") is None else f"{p['loss'] * 100:.0f} %",
        "handshake": "-" if p.get("handshake_age_s") is None else f"{p['handshake_age_s']}s ago",
    }


def history_line(history: list[dict[str, Any]]) -> str:
    """The 24 h history in one line: how many samples since when, and the worst one."""
    worst = max(history, key=lambda x: (x["down"], x["lossy"], x["relay"]))
    n = len(history)
    return (
        f"history: {n} sample{'' if n == 1 else 's'} since {str(history[0]['at'])[:19]}; worst "
        f"{str(worst['at'])[:19]}: {worst['down']} down, {worst['lossy']} lossy, {worst['relay']} relay"
    )


def cvlan_health(c: Client, ns: argparse.Namespace) -> Any:
    h = c.call("GET", _t(ns) + f"/cvlans/{_q(ns.name)}/health")
    if ns.json:
        return h
    counts = ", ".join(f"{n} {k}" for k, n in h["summary"].items() if n)
    print(f"CVLAN {h['cvlan']}: {len(h['members'])} members, {len(h['pairs'])} pairs ({counts or 'none'})")
    for u in h["unreachable"]:
        print(f"UNREACHABLE: no peer reaches {u['name']}")
    for e in h["events"][:5]:
        pair = e["node"] + (f" → {e['peer']}" if e["peer"] else "")
        print(f"{str(e['at'])[:19]}  {e['kind']}  {pair}  {e['detail']}")
    if h["history"]:
        print(history_line(h["history"]))
    return [health_row(p) for p in h["pairs"]], HEALTH_COLS


def cvlan_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/cvlans/{_q(ns.name)}")
    return {"deleted": ns.name}


def token_create(c: Client, ns: argparse.Namespace) -> Any:
    body: dict[str, Any] = {
        "cvlan": ns.cvlan,
        "reusable": ns.reusable,
        "tags": ns.tag or [],
        "ephemeral": ns.ephemeral,
    }
    if ns.uses is not None:
        body["uses"] = ns.uses
    if ns.expires:
        body["expires"] = ns.expires
    out = c.call("POST", _t(ns) + "/tokens", body)
    if not ns.json:
        print(f"Enrollment token for CVLAN {out['cvlan']} (shown once; store it now):")
        print(f"  {out['token']}")
        print(f"expires {out['expires_at']}, uses {out['max_uses'] or 'unlimited'}")
        print("On the machine that should join, as root:")
        for line in out["join_steps"]:
            print(f"  {line}")
        return None
    return out


def token_list(c: Client, ns: argparse.Namespace) -> Any:
    rows = c.pages(_t(ns) + "/tokens", {"cvlan": ns.cvlan})
    for r in rows:
        r["state"] = (
            "revoked"
            if r["revoked_at"]
            else ("used" if r["max_uses"] and r["uses"] >= r["max_uses"] else "active")
        )
    return rows, ["id", "prefix", "cvlan", "reusable", "uses", "max_uses", "state", "expires_at", "tags"]


def token_revoke(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("DELETE", _t(ns) + f"/tokens/{_q(ns.id)}")


def oidc_map_add(c: Client, ns: argparse.Namespace) -> Any:
    body = {"provider": ns.provider, "group": ns.group, "role": ns.role}
    return c.call("POST", _t(ns) + "/oidc-mappings", body)


def oidc_map_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("GET", _t(ns) + "/oidc-mappings")["items"], [
        "id",
        "provider",
        "group",
        "role",
        "created_at",
    ]


def oidc_map_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/oidc-mappings/{_q(ns.mapping)}")
    return {"deleted": ns.mapping}


def oidc_passwords(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PUT", _t(ns) + "/signin-policy", {"local_passwords": ns.state == "on"})


NODE_COLS = [
    "id",
    "name",
    "cvlan",
    "address",
    "online",
    "last_seen",
    "endpoints",
    "map_version",
    "expires_in",
    "disabled",
]


def expires_in(n: dict[str, Any]) -> str:
    """'6d 23h', '5h 10m', 'expired', 'not issued'; '(expiry off)' added for a server."""
    text = table.expires_in(n.get("expires_in_s"))
    return text + (
        " (expiry off)" if n.get("key_expiry_disabled") and n.get("expires_in_s") is not None else ""
    )


def node_list(c: Client, ns: argparse.Namespace) -> Any:
    if ns.tenant:
        rows = c.pages(_t(ns) + "/nodes", {"cvlan": ns.cvlan})
    else:
        if ns.cvlan:
            raise ApiError(0, "usage", "--cvlan needs --tenant")
        rows = c.pages("/api/v1/nodes")
    for r in rows:
        r["expires_in"] = expires_in(r)
    return rows, (["tenant_id", *NODE_COLS] if not ns.tenant else NODE_COLS)


def node_show(c: Client, ns: argparse.Namespace) -> Any:
    n = c.call("GET", _t(ns) + f"/nodes/{_q(ns.node)}")
    routes = c.call("GET", _t(ns) + "/routes", None, {"node": str(n["id"])})["items"]
    if ns.json:
        return {**n, "routes": routes}
    n["routes"] = routes_cli.summary(routes)
    n["expires_in"] = expires_in(n)
    h = dict(n.get("health") or {})
    peers = h.pop("peers", None)
    n["health"] = ", ".join(f"{k}={v}" for k, v in h.items() if k != "peers_at") or "-"
    for k, v in n.items():
        print(f"{k:>16}: {v}")
    if peers is not None:
        print(f"\npeers as {n['name']} saw them at {str(h.get('peers_at', '?'))[:19]}:")
        members = c.call("GET", _t(ns) + f"/cvlans/{n['cvlan_id']}/health")["members"] if peers else []
        names = {m["id"]: m["name"] for m in members}
        rows = [
            health_row({**p, "src_name": n["name"], "dst_name": names.get(p["node_id"], p["node_id"])})
            for p in peers
        ]
        print_table(rows, HEALTH_COLS)
    return None


def node_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/nodes/{_q(ns.node)}")
    return {"deleted": ns.node}


def node_rename(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PATCH", _t(ns) + f"/nodes/{_q(ns.node)}", {"name": ns.new_name})


def node_move(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PATCH", _t(ns) + f"/nodes/{_q(ns.node)}", {"cvlan": ns.cvlan})


def node_disable(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", _t(ns) + f"/nodes/{_q(ns.node)}/disable")


def node_enable(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", _t(ns) + f"/nodes/{_q(ns.node)}/enable")


def node_key_expiry(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PUT", _t(ns) + f"/nodes/{_q(ns.node)}/key-expiry", {"disabled": ns.state == "off"})


def tenant_key_expiry(c: Client, ns: argparse.Namespace) -> Any:
    life = None if ns.lifetime == "default" else ns.lifetime
    return c.call("PUT", _t(ns) + "/key-expiry", {"node_cert_lifetime": life})


def node_tag(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PUT", _t(ns) + f"/nodes/{_q(ns.node)}/tags", {"tags": ns.tags})


REAUTH_COLS = ["node_id", "node", "address", "state", "requested_at", "last_attempt_at", "decided_by"]


def node_reauth_requests(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("GET", _t(ns) + "/reauth-requests")["items"], REAUTH_COLS


def node_reauth(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", _t(ns) + f"/nodes/{_q(ns.node)}/reauth/{ns.decision}")


def user_create(c: Client, ns: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"email": ns.email, "role": ns.role}
    if ns.password_stdin:
        body["password"] = sys.stdin.readline().rstrip("\n")
    out = c.call("POST", _t(ns) + "/users", body)
    if "password" in out and not ns.json:
        print(f"User {out['email']} created with role {out['role']}.")
        print(f"Generated password (shown once): {out['password']}")
        return None
    return out


def user_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages(_t(ns) + "/users"), ["id", "email", "role", "created_at"]


def user_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/users/{_q(ns.user)}")
    return {"deleted": ns.user}


def apitoken_create(c: Client, ns: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"role": ns.role, "name": ns.name or ""}
    if ns.expires:
        body["expires"] = ns.expires
    out = c.call("POST", _t(ns) + "/apitokens", body)
    if not ns.json:
        print(f"API token ({out['role']} in tenant {ns.tenant}, shown once):")
        print(f"  {out['token']}")
        return None
    return out


def apitoken_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages(_t(ns) + "/apitokens"), [
        "id",
        "prefix",
        "name",
        "role",
        "created_at",
        "expires_at",
        "revoked_at",
    ]


def apitoken_revoke(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("DELETE", _t(ns) + f"/apitokens/{_q(ns.id)}")


def region_create(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", "/api/v1/regions", {"name": ns.name})


def region_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages("/api/v1/regions"), ["id", "name", "created_at"]


def region_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", f"/api/v1/regions/{_q(ns.name)}")
    return {"deleted": ns.name}


def _print_start(out: dict[str, Any], what: str, ns: argparse.Namespace) -> Any:
    if ns.json:
        return out
    print(f"{what} {out['name']} registered in region {out['region']}. Start it with (token shown once):")
    print(f"  {out['command']}")
    return None


def relay_create(c: Client, ns: argparse.Namespace) -> Any:
    body = {"name": ns.name, "region": ns.region, "url": ns.url, "stun": ns.stun or ""}
    return _print_start(c.call("POST", "/api/v1/relays", body), "Relay", ns)


def relay_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.pages("/api/v1/relays"), ["id", "name", "region", "url", "stun", "last_seen"]


def relay_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", f"/api/v1/relays/{_q(ns.name)}")
    return {"deleted": ns.name}


def vrouter_create(c: Client, ns: argparse.Namespace) -> Any:
    body = {"name": ns.name, "region": ns.region, "endpoint": ns.endpoint}
    return _print_start(c.call("POST", "/api/v1/vrouters", body), "Vrouter", ns)


def vrouter_list(c: Client, ns: argparse.Namespace) -> Any:
    if ns.cvlan:  # the vrouters serving one CVLAN (any role in the tenant)
        if not ns.tenant:
            raise ApiError(0, "usage", "vrouter list --cvlan needs --tenant")
        out = c.call("GET", f"{_t(ns)}/cvlans/{_q(ns.cvlan)}/vrouters")
        return out["items"], ["vrouter", "region", "endpoint", "registered", "last_seen"]
    return c.pages("/api/v1/vrouters"), ["id", "name", "region", "endpoint", "wg_public_key", "last_seen"]


def vrouter_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", f"/api/v1/vrouters/{_q(ns.name)}")
    return {"deleted": ns.name}


def vrouter_attach(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("POST", f"{_t(ns)}/cvlans/{_q(ns.cvlan)}/vrouters", {"vrouter": ns.name})


def vrouter_detach(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", f"{_t(ns)}/cvlans/{_q(ns.cvlan)}/vrouters/{_q(ns.name)}")
    return {"detached": ns.name, "cvlan": ns.cvlan}


def policy_show(c: Client, ns: argparse.Namespace) -> Any:
    out = c.call("GET", _t(ns) + f"/cvlans/{_q(ns.cvlan)}/policy")
    if ns.json:
        return out
    print(f"# CVLAN {out['cvlan']}: {out['effect']}")
    if out["policy"] is not None:
        print(json.dumps(out["policy"], indent=2))
    return None


def policy_set(c: Client, ns: argparse.Namespace) -> Any:
    try:
        text = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text()
        doc = json.loads(text)
    except OSError as e:
        raise ApiError(0, "usage", f"cannot read {ns.file}: {e.strerror}") from None
    except ValueError as e:
        raise ApiError(0, "invalid", f"{ns.file} is not valid JSON: {e}") from None
    out = c.call("PUT", _t(ns) + f"/cvlans/{_q(ns.cvlan)}/policy", doc)
    if ns.json:
        return out
    print(
        f"policy of CVLAN {out['cvlan']} {'updated' if out['changed'] else 'unchanged'} ({out['hash'][:12]})"
    )
    return None


def policy_clear(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _t(ns) + f"/cvlans/{_q(ns.cvlan)}/policy")
    return {"cleared": ns.cvlan}


def denied_list(c: Client, ns: argparse.Namespace) -> Any:
    rows = c.pages(_t(ns) + "/denied", {"cvlan": ns.cvlan, "since": ns.since})
    return rows, ["cvlan", "src", "dst", "proto", "dport", "packets", "reports", "last_seen"]


def audit_list(c: Client, ns: argparse.Namespace) -> Any:
    path = _t(ns) + "/audit" if ns.tenant else "/api/v1/audit"
    q = {
        "since": ns.since,
        "until": ns.until,
        "actor": ns.actor,
        "action": ns.action,
        "limit": ns.limit,
        "offset": ns.offset,
    }
    page = c.call("GET", path, query=q)
    return page["items"], [
        "created_at",
        "tenant_id",
        "actor",
        "action",
        "target_type",
        "target_id",
        "request_id",
    ]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    p = argparse.ArgumentParser(
        prog="cvlan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_version_flag(p)
    p.add_argument("--config", type=Path, help="admin.conf written by the controller (or CVLAN_CONFIG)")
    p.add_argument("--server", help="controller URL (or CVLAN_SERVER)")
    p.add_argument("--token", help="API token (or CVLAN_TOKEN)")
    groups = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def group(name: str, help_: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        g = groups.add_parser(name, help=help_, description=help_)
        return g.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        fn: Cmd,
        help_: str,
        tenant: bool | None = True,
    ) -> argparse.ArgumentParser:
        lp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        if tenant is True:
            lp.add_argument("--tenant", required=True, help="tenant name or id")
        elif tenant is None:
            lp.add_argument("--tenant", help="tenant name or id")
        lp.set_defaults(fn=fn)
        return lp

    login.add_parser(groups)

    g = group("tenant", "manage tenants (platform admin)")
    leaf(g, "create", tenant_create, "create a tenant", False).add_argument("name")
    g.choices["create"].add_argument("--display-name")
    leaf(g, "list", tenant_list, "list tenants", False)
    leaf(g, "show", tenant_show, "show a tenant", False).add_argument("name")
    leaf(g, "delete", tenant_delete, "delete an empty tenant", False).add_argument("name")
    x = leaf(g, "key-expiry", tenant_key_expiry, "how long the tenant's node certificates last (admin)")
    x.add_argument("lifetime", help="a duration such as 7d or 30d (1h-365d), or 'default'")

    g = group("oidc", "sign-in through identity providers: group mappings and password policy (docs/AUTH.md)")
    x = leaf(g, "map-add", oidc_map_add, "give members of a provider's group a role in the tenant (admin)")
    x.add_argument("--provider", required=True, help="provider name in the controller's configuration")
    x.add_argument("--group", required=True, help="group name as the provider sends it")
    x.add_argument("--role", required=True, choices=("admin", "operator", "auditor"))
    leaf(g, "map-list", oidc_map_list, "list the tenant's group mappings")
    x = leaf(
        g, "map-delete", oidc_map_delete, "remove a group mapping (members lose the role at next sign-in)"
    )
    x.add_argument("mapping", help="mapping id or group name")
    x = leaf(
        g, "passwords", oidc_passwords, "allow (on) or forbid (off) password sign-in for the tenant's members"
    )
    x.add_argument("state", choices=("on", "off"))

    g = group("cvlan", "manage CVLANs of a tenant")
    x = leaf(g, "create", cvlan_create, "create a CVLAN")
    x.add_argument("name")
    x.add_argument("--subnet", help="CIDR; default: the next free subnet of the pool")
    x.add_argument("--mode", choices=("mesh", "hub"), default="mesh")
    leaf(g, "list", cvlan_list, "list CVLANs")
    leaf(g, "show", cvlan_show, "show a CVLAN").add_argument("name")
    leaf(g, "delete", cvlan_delete, "delete an empty CVLAN").add_argument("name")
    leaf(
        g, "health", cvlan_health, "reachability matrix: who reaches whom, how, RTT and loss (worst first)"
    ).add_argument("name")

    g = group("token", "manage enrollment tokens")
    x = leaf(g, "create", token_create, "create an enrollment token and print the join command")
    x.add_argument("--cvlan", required=True)
    x.add_argument("--reusable", action="store_true", help="allow several nodes to join with it")
    x.add_argument("--uses", type=int, help="maximum number of nodes (implies --reusable when > 1)")
    x.add_argument(
        "--ephemeral",
        action="store_true",
        help="its nodes are removed after being offline for ephemeral_offline_s (CI runners, containers)",
    )
    x.add_argument("--expires", help="lifetime such as 1h, 24h (default), 7d")
    x.add_argument("--tag", action="append", help="tag for the nodes it enrols (repeatable)")
    leaf(g, "list", token_list, "list enrollment tokens").add_argument("--cvlan")
    leaf(g, "revoke", token_revoke, "revoke an enrollment token").add_argument(
        "id", help="token id or prefix"
    )

    g = group("node", "manage nodes")
    x = leaf(g, "list", node_list, "list nodes with status", None)
    x.add_argument("--cvlan")
    leaf(g, "show", node_show, "show a node").add_argument("node")
    leaf(g, "delete", node_delete, "delete a node (its certificate is refused at once)").add_argument("node")
    x = leaf(g, "rename", node_rename, "rename a node")
    x.add_argument("node")
    x.add_argument("new_name")
    x = leaf(g, "move", node_move, "move a node to another CVLAN of the tenant")
    x.add_argument("node")
    x.add_argument("--cvlan", required=True)
    leaf(
        g, "disable", node_disable, "disable a node: refused at once, its peers drop it; keeps its identity"
    ).add_argument("node")
    leaf(g, "enable", node_enable, "enable a disabled node again (same id, address and name)").add_argument(
        "node"
    )
    x = leaf(g, "key-expiry", node_key_expiry, "key expiry of a node (admin): off for servers, on again")
    x.add_argument("node")
    x.add_argument("state", choices=("on", "off"), help="off: its certificates last ten years")
    x = leaf(g, "tag", node_tag, "replace a node's tags (admin); no TAG clears them")
    x.add_argument("node")
    x.add_argument("tags", nargs="*", metavar="TAG", help="e.g. tag:web (policies follow at once)")
    leaf(g, "reauth-requests", node_reauth_requests, "list nodes asking to re-authenticate without a token")
    x = leaf(g, "reauth", node_reauth, "approve or reject a node's re-authentication request (admin)")
    x.add_argument("decision", choices=("approve", "reject"), help="approve: it comes back as itself")
    x.add_argument("node")

    g = group("user", "manage users of a tenant")
    x = leaf(g, "create", user_create, "create a user (a password is generated unless --password-stdin)")
    x.add_argument("--email", required=True)
    x.add_argument("--role", required=True, choices=("admin", "operator", "auditor"))
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    leaf(g, "list", user_list, "list users")
    leaf(g, "delete", user_delete, "remove a user from the tenant").add_argument("user", help="email or id")

    g = group("apitoken", "manage API tokens of a tenant")
    x = leaf(g, "create", apitoken_create, "create an API token")
    x.add_argument("--role", required=True, choices=("admin", "operator", "auditor"))
    x.add_argument("--name")
    x.add_argument("--expires", help="lifetime such as 30d")
    leaf(g, "list", apitoken_list, "list API tokens")
    leaf(g, "revoke", apitoken_revoke, "revoke an API token").add_argument("id", help="token id or prefix")

    g = group("region", "manage regions (platform admin)")
    leaf(g, "create", region_create, "create a region", False).add_argument("name")
    leaf(g, "list", region_list, "list regions", False)
    leaf(g, "delete", region_delete, "delete an unused region", False).add_argument("name")

    g = group("relay", "manage relays (platform admin)")
    x = leaf(g, "create", relay_create, "register a relay and print its start command", False)
    x.add_argument("name")
    x.add_argument("--region", required=True)
    x.add_argument("--url", required=True, help="https:// URL nodes use to reach the relay")
    x.add_argument("--stun", help="HOST:PORT of its STUN responder")
    leaf(g, "list", relay_list, "list relays", False)
    leaf(g, "delete", relay_delete, "delete a relay", False).add_argument("name")

    g = group("vrouter", "manage vrouters (create, list, delete: platform admin; attach, detach: operator)")
    x = leaf(g, "create", vrouter_create, "register a vrouter and print its start command", False)
    x.add_argument("name")
    x.add_argument("--region", required=True)
    x.add_argument("--endpoint", required=True, help="HOST:PORT of its WireGuard hub")
    x = leaf(g, "list", vrouter_list, "list vrouters (with --cvlan: those serving it)", None)
    x.add_argument("--cvlan", help="only the vrouters serving this CVLAN (needs --tenant)")
    leaf(g, "delete", vrouter_delete, "delete a vrouter", False).add_argument("name")
    for verb, fn, what in (("attach", vrouter_attach, "serve"), ("detach", vrouter_detach, "stop serving")):
        x = leaf(g, verb, fn, f"make a vrouter {what} a CVLAN of the tenant (operator)")
        x.add_argument("name", help="vrouter name or id")
        x.add_argument("--cvlan", required=True, help="CVLAN name or id")

    g = group("policy", "packet-filter policy of a CVLAN (see docs/POLICY.md)")
    leaf(g, "show", policy_show, "show the policy").add_argument("--cvlan", required=True)
    x = leaf(g, "set", policy_set, "replace the policy with a JSON document")
    x.add_argument("--cvlan", required=True)
    x.add_argument("file", help="JSON policy document, or - for standard input")
    leaf(g, "clear", policy_clear, "remove the policy (all members reach each other)").add_argument(
        "--cvlan", required=True
    )
    dnscmd.add_commands(group, leaf)
    routes_cli.register(group, leaf)
    g = group("denied", "traffic denied by policy, as reported by nodes")
    x = leaf(g, "list", denied_list, "denied flows, most packets first")
    x.add_argument("--cvlan")
    x.add_argument("--since", help="ISO time or a duration back from now, e.g. 1h")

    a = groups.add_parser(
        "audit", help="read the audit log", description="read the audit log, newest first", parents=[common]
    )
    a.add_argument("--tenant")
    a.add_argument("--since", help="ISO time or a duration back from now, e.g. 24h")
    a.add_argument("--until")
    a.add_argument("--actor")
    a.add_argument("--action", help="e.g. node.delete")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--offset", type=int, default=0)
    a.set_defaults(fn=audit_list)
    return p


def resolve_client(ns: argparse.Namespace) -> Client:
    conf = adminconf.AdminConf()
    path = ns.config or (Path(os.environ["CVLAN_CONFIG"]) if os.environ.get("CVLAN_CONFIG") else None)
    if path is not None:
        try:
            conf = adminconf.load(path, complete=False)
        except adminconf.AdminConfError as e:
            raise ApiError(0, "usage", str(e)) from None
    server = ns.server or os.environ.get("CVLAN_SERVER") or conf.server
    token = ns.token or os.environ.get("CVLAN_TOKEN") or conf.token
    if not server or not token:
        raise ApiError(
            0,
            "usage",
            "no server or token: use --config admin.conf, --server/--token or CVLAN_SERVER/CVLAN_TOKEN",
        )
    return Client(server, token, conf.ca_pem)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.json = getattr(ns, "json", False)
    try:
        if getattr(ns, "login", False):
            return login.run(ns)
        client = resolve_client(ns)
        out = ns.fn(client, ns)
    except ApiError as e:
        print(f"cvlan: {e}", file=sys.stderr)
        return 2 if e.code == "usage" else 1
    except KeyboardInterrupt:
        return 1
    if out is None:
        return 0
    if isinstance(out, tuple):
        rows, cols = out
        if ns.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows, cols)
    elif ns.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
