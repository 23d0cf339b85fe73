"""`cvlan dns ...`: a CVLAN's DNS zone, tenant-defined records and split-DNS forwarders (docs/DNS.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cvlan.cli.http import Client

Cmd = Callable[[Client, argparse.Namespace], Any]
Group = Callable[[str, str], "argparse._SubParsersAction[argparse.ArgumentParser]"]
Leaf = Callable[..., argparse.ArgumentParser]
RECORD_COLS = ["id", "name", "type", "value", "ttl"]


def _d(ns: argparse.Namespace) -> str:
    return f"/api/v1/tenants/{quote(ns.tenant, safe='')}/cvlans/{quote(ns.cvlan, safe='')}/dns"


def dns_show(c: Client, ns: argparse.Namespace) -> Any:
    out = c.call("GET", _d(ns))
    if ns.json:
        return out
    print(f"zone {out['zone']} (resolver {out['resolver']} on every node)")
    for r in out["records"]:
        print(
            f"  record {r['id']}: {r['name']} {r['type']} {r['value']}"
            + (f" ttl {r['ttl']}" if r["ttl"] else "")
        )
    for f in out["forwarders"]:
        print(f"  forward {f['domain']} -> {', '.join(f['servers'])}")
    return None


def record_add(c: Client, ns: argparse.Namespace) -> Any:
    body = {"name": ns.name, "type": ns.type, "value": ns.value, "ttl": ns.ttl}
    return c.call("POST", _d(ns) + "/records", body)


def record_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("GET", _d(ns))["records"], RECORD_COLS


def record_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _d(ns) + f"/records/{quote(ns.id, safe='')}")
    return {"deleted": ns.id}


def forward_set(c: Client, ns: argparse.Namespace) -> Any:
    return c.call("PUT", _d(ns) + f"/forwarders/{quote(ns.domain, safe='')}", {"servers": ns.servers})


def forward_delete(c: Client, ns: argparse.Namespace) -> Any:
    c.call("DELETE", _d(ns) + f"/forwarders/{quote(ns.domain, safe='')}")
    return {"deleted": ns.domain}


def add_commands(group: Group, leaf: Leaf) -> None:
    """The `dns` command group (build_parser's group and leaf helpers)."""
    g = group("dns", "DNS names of a CVLAN's nodes: zone, extra records, split-DNS forwarders")

    def cmd(name: str, fn: Cmd, help_: str) -> argparse.ArgumentParser:
        x = leaf(g, name, fn, help_)
        x.add_argument("--cvlan", required=True, help="CVLAN name or id")
        return x

    cmd("show", dns_show, "show the CVLAN's zone, records and forwarders")
    x = cmd("record-add", record_add, "add a record to the CVLAN's zone (every node resolves it)")
    x.add_argument("name", help='owner inside the zone, e.g. git or _ldap._tcp; "@" the zone itself')
    x.add_argument("type", help="A, AAAA, CNAME, TXT, MX or SRV")
    x.add_argument("value", help='zone-file text, e.g. 10.1.0.7, "10 mail.example.", "v=spf1 -all"')
    x.add_argument("--ttl", type=int, default=0, help="seconds (default 0: the resolver's 60)")
    cmd("record-list", record_list, "list the CVLAN's records")
    cmd("record-delete", record_delete, "delete a record").add_argument("id", help="record id (record-list)")
    x = cmd("forward", forward_set, "send a domain's queries to these DNS servers (split DNS)")
    x.add_argument("domain", help="e.g. corp.example (and every name below it)")
    x.add_argument("servers", nargs="+", metavar="SERVER", help="DNS server IP addresses, tried in order")
    cmd("forward-delete", forward_delete, "stop forwarding a domain").add_argument("domain")
