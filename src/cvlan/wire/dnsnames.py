"""DNS names of CVLAN nodes and the checks of tenant-defined records (pure; docs/DNS.md).

Every node is `<node>.<cvlan>.<tenant>.<domain>`: each of our names becomes one DNS label (lower case,
`.` and `_` turned into `-`, RFC 1035 letters, digits and hyphens only). Node names are unique in a
tenant, but two may give the same label ("Web_1" and "web-1"); then the node with the lower id keeps
the label and the others get `-<node id>`, which is deterministic and stays put when other nodes come
and go."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

RESOLVER_ADDRESS = "100.100.100.100"
"""Where cvland's resolver listens, on the WireGuard interface. It lies in the default pool
(100.64.0.0/10), so the controller's IPAM never hands out a subnet that contains it (ipam.py): it can
never be a node's address, and a CVLAN subnet given by hand that contains it is refused."""
DEFAULT_DOMAIN = "cvlan.internal"
""".internal is reserved for private use (ICANN, 2024): it never clashes with a public name."""
RECORD_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV")
DEFAULT_TTL = 60
MAX_TTL = 86400

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OWNER = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?")


class DnsNameError(ValueError):
    """A domain, record or forwarder was refused; the message says which part and why."""


def label(name: str) -> str:
    """The DNS label of one of our names (node, CVLAN, tenant): never empty, at most 63 characters."""
    out = _NOT_LABEL.sub("-", name.lower().replace(".", "-").replace("_", "-")).strip("-")
    return out[:63].rstrip("-") or "x"


def zone(cvlan: str, tenant: str, domain: str) -> str:
    """The CVLAN's zone, e.g. office.acme.cvlan.internal."""
    return f"{label(cvlan)}.{label(tenant)}.{domain}"


def assign_labels(members: Iterable[tuple[int, str]]) -> dict[int, str]:
    """node id -> its unique label among these (node id, name) pairs (clashes: `-<id>`, see above)."""
    out: dict[int, str] = {}
    taken: set[str] = set()
    for node_id, name in sorted(members):
        want = label(name)
        if want in taken:
            want = f"{want[: 62 - len(str(node_id))]}-{node_id}"
        taken.add(want)
        out[node_id] = want
    return out


def check_domain(text: str, what: str = "domain") -> str:
    """A lower-case domain without trailing dot (`corp.example`); DnsNameError otherwise."""
    d = text.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(d) or len(d) > 200:
        raise DnsNameError(f"{what} {text!r}: expected a domain such as corp.example (letters, digits, -)")
    return d


def check_server(text: str) -> str:
    """An IP address of a DNS server; DnsNameError otherwise."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise DnsNameError(f"server {text!r}: expected an IP address such as 10.1.0.53") from None


def check_record(name: str, rtype: str, value: str, ttl: int) -> tuple[str, str, str, int]:
    """Normalize a tenant record (owner relative to the CVLAN zone, "@" for the zone itself).

    The data is parsed by dnspython (the zone-file syntax of its type); returns (name, TYPE, value
    in canonical text, ttl)."""
    owner = name.strip().lower().rstrip(".")
    if owner != "@" and (not _OWNER.fullmatch(owner) or len(owner) > 150):
        raise DnsNameError(
            f"record name {name!r}: expected a name inside the CVLAN's zone, e.g. git or _ldap._tcp"
        )
    t = rtype.strip().upper()
    if t not in RECORD_TYPES:
        raise DnsNameError(f"record type {rtype!r}: expected one of {', '.join(RECORD_TYPES)}")
    if not 0 <= ttl <= MAX_TTL:
        raise DnsNameError(f"record ttl {ttl}: expected 0..{MAX_TTL} seconds (0: {DEFAULT_TTL})")
    try:
        rd = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.from_text(t), value, origin=dns.name.root, relativize=False
        )
    except (dns.exception.DNSException, ValueError) as e:
        raise DnsNameError(f"record value {value!r} is not valid {t} data: {e}") from None
    return owner, t, rd.to_text(), ttl
