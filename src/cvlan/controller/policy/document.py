"""The policy document of a CVLAN, as users write it (JSON). Unknown fields are refused.

    {"rules": [
        {"action": "accept",               # or "drop"; default accept
         "src": ["tag:web", "node:db1", "100.64.0.0/24", "*"],
         "dst": ["tag:db"],                  # "*" = every member; "route:10.1.0.0/24" = a subnet route;
                                             # "internet" = anywhere outside the CVLAN through an exit node
         "proto": "tcp",                     # "any" (default), "tcp", "udp", "icmp"
         "ports": ["5432", "8000-8100"],     # tcp/udp only; empty = all
         "comment": "web tier reaches the database"}]}

No document (the default) allows all traffic between members of the CVLAN. Once a document exists,
traffic to a member is allowed only by a matching accept rule: rules are evaluated in order on the
receiving node, the first match wins, and everything else is dropped, counted and reported as a
denied flow."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cvlan.controller.errors import DomainError, Kind

_SELECTOR = re.compile(r"\*|tag:[A-Za-z0-9][A-Za-z0-9._-]{0,62}|node:[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PORT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
MAX_RULES = 500


INTERNET = "internet"
"""The destination selector of traffic leaving through an exit node (docs/EXIT-NODES.md)."""


def _check_selector(v: str, allow_cidr: bool) -> str:
    if _SELECTOR.fullmatch(v) or (v == INTERNET and not allow_cidr):
        return v
    if not allow_cidr and v.startswith("route:"):
        try:
            net = ipaddress.ip_network(v.removeprefix("route:"), strict=True)
        except ValueError:
            net = None
        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
            return f"route:{net}"
        if isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"{v!r}: the default route is not a subnet route; name exit traffic 'internet'")
        raise ValueError(f"{v!r}: expected route:CIDR naming an IPv4 network, e.g. route:10.1.0.0/24")
    if allow_cidr:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            net = None
        if isinstance(net, ipaddress.IPv4Network):
            return str(net)
    last = " or an IPv4 CIDR" if allow_cidr else ", 'route:CIDR' or 'internet'"
    kinds = "'*', 'tag:NAME', 'node:NAME'" + last
    raise ValueError(f"{v!r} is not a selector: expected {kinds}")


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["accept", "drop"] = "accept"
    src: list[str] = Field(min_length=1, max_length=100)
    dst: list[str] = Field(min_length=1, max_length=100)
    proto: Literal["any", "tcp", "udp", "icmp"] = "any"
    ports: list[str] = Field(default_factory=list, max_length=50)
    comment: str = Field(default="", max_length=300)

    @field_validator("src")
    @classmethod
    def _src(cls, v: list[str]) -> list[str]:
        return [_check_selector(x, True) for x in v]

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: list[str]) -> list[str]:
        return [_check_selector(x, False) for x in v]

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for p in v:
            m = _PORT.fullmatch(p)
            lo = int(m.group(1)) if m else 0
            hi = int(m.group(2) or lo) if m else 0
            if not m or not 1 <= lo <= hi <= 65535:
                raise ValueError(f"port {p!r}: expected a port 1-65535 or a range such as 8000-8100")
        return v

    def model_post_init(self, _: Any) -> None:
        if self.ports and self.proto not in ("tcp", "udp"):
            raise ValueError("ports need proto tcp or udp")


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[PolicyRule] = Field(default_factory=list, max_length=MAX_RULES)


def parse_document(data: Any) -> PolicyDocument:
    """Validate a document; a DomainError(INVALID) names the first problem and where it is."""
    if not isinstance(data, dict):
        raise DomainError(Kind.INVALID, "policy must be a JSON object with a 'rules' list")
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "policy"
        msg = (
            "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        )
        raise DomainError(Kind.INVALID, f"policy {loc}: {msg}", {"field": loc}) from e


def content_hash(doc: PolicyDocument) -> str:
    canonical = json.dumps(doc.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
