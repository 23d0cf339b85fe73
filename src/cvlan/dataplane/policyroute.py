"""Exit-node policy routing, as wg-quick does it for a default route through WireGuard.

All traffic goes to a separate table whose default route is the WireGuard interface, except:
  * packets WireGuard itself sends (its socket carries EXIT_FWMARK, set over the UAPI): they would
    loop into the tunnel;
  * destinations the main table has a more specific route for (`suppress_prefixlength 0`: the
    host's LANs, the CVLAN subnet and the subnet routes stay as they are);
  * the controller, the relays and the peers' direct endpoints (one rule each, looked up in main),
    so the control plane and the relayed and direct paths never depend on the exit node.

Selecting no exit node deletes the rules at our priorities and flushes our table: the host's routing
is exactly what it was (nothing else is touched). cvland does the same at start, so a crash never
leaves a default route into a dead tunnel."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_TABLE = 51888
EXIT_FWMARK = 0xCAB0
PRIO_EXCLUDE = 5200
"""Rules for the controller, relays and peer endpoints (lookup main)."""
PRIO_SUPPRESS = 5210
PRIO_TUNNEL = 5220
PRIORITIES = (PRIO_EXCLUDE, PRIO_SUPPRESS, PRIO_TUNNEL)
MAX_RULES_PER_PRIO = 1000
"""Bound on the rules deleted at one priority (a host has a few)."""


class PolicyRouteError(Exception):
    """An ip rule or route was refused."""


@dataclass(frozen=True, slots=True)
class ExitPlan:
    """Policy routing for a selected exit node reached through interface ifname."""

    ifname: str
    excludes: tuple[str, ...]
    """Host addresses (/32) kept out of the tunnel, sorted."""
    fwmark: int = EXIT_FWMARK
    table: int = EXIT_TABLE

    def commands(self) -> list[list[str]]:
        """The `ip` commands that install the plan on a host with none of it (in this order)."""
        out = [["route", "replace", "default", "dev", self.ifname, "table", str(self.table)]]
        out += [["rule", "add", "pref", str(PRIO_EXCLUDE), "to", x, "lookup", "main"] for x in self.excludes]
        out.append(
            ["rule", "add", "pref", str(PRIO_SUPPRESS), "lookup", "main", "suppress_prefixlength", "0"]
        )
        out.append(
            [
                "rule",
                "add",
                "pref",
                str(PRIO_TUNNEL),
                "not",
                "fwmark",
                hex(self.fwmark),
                "lookup",
                str(self.table),
            ]
        )
        return out


def exit_plan(ifname: str, excludes: Iterable[str]) -> ExitPlan:
    """The plan with excludes as sorted, deduplicated /32 networks (IPv4 only; others are ignored)."""
    nets = set()
    for x in excludes:
        try:
            ip = ipaddress.ip_address(x)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_unspecified:
            nets.add(ip)
    return ExitPlan(ifname, tuple(f"{ip}/32" for ip in sorted(nets)))


class PolicyRouter(Protocol):
    def apply(self, plan: ExitPlan | None) -> None: ...
    def teardown(self) -> None: ...


class IpPolicyRouter:
    """Applies ExitPlan with iproute2 in the current network namespace, by replacing it whole."""

    def __init__(self) -> None:
        self._applied: ExitPlan | None = None

    def apply(self, plan: ExitPlan | None) -> None:
        if plan == self._applied and plan is not None:
            return
        self.teardown()
        if plan is None:
            return
        for argv in plan.commands():
            r = _ip(argv)
            if r.returncode != 0:
                err = (r.stderr.strip().splitlines() or ["ip failed"])[0]
                self.teardown()
                raise PolicyRouteError(f"exit node routing: ip {' '.join(argv)}: {err}")
        self._applied = plan

    def teardown(self) -> None:
        """Delete every rule at our priorities and flush our table (also what a crashed run left)."""
        for prio in PRIORITIES:
            for _ in range(MAX_RULES_PER_PRIO):
                if _ip(["rule", "del", "pref", str(prio)]).returncode != 0:
                    break
        _ip(["route", "flush", "table", str(EXIT_TABLE)])
        self._applied = None


def _ip(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-4", *argv], capture_output=True, text=True, timeout=10)


class FakePolicyRouter:
    """Records the plans it was given."""

    def __init__(self) -> None:
        self.plan: ExitPlan | None = None
        self.applied: list[ExitPlan | None] = []
        self.teardowns = 0

    def apply(self, plan: ExitPlan | None) -> None:
        self.plan = plan
        self.applied.append(plan)

    def teardown(self) -> None:
        self.plan = None
        self.teardowns += 1
