"""HOST:PORT and IP:PORT text, the one parser every component uses for listen addresses, relay and
vrouter endpoints, STUN servers and WireGuard peer endpoints."""

from __future__ import annotations

import ipaddress

__all__ = ["is_endpoint", "parse_endpoint", "split_hostport"]


def split_hostport(
    text: str, *, any_port: bool = False, default_host: str = "", example: str = "0.0.0.0:443"
) -> tuple[str, int]:
    """(host, port) of "host:port" or "[v6]:port"; the host loses its brackets.

    any_port admits port 0 (a listener that lets the system choose); an empty host is an error
    unless default_host is given. ValueError("expected HOST:PORT, e.g. <example>") otherwise."""
    host, sep, port = text.rpartition(":")
    low = 0 if any_port else 1
    host = host.strip("[]") or default_host
    if not sep or not host or not _is_port(port) or not low <= int(port) or _has_space(text):
        raise ValueError(f"expected HOST:PORT, e.g. {example}")
    return host, int(port)


def parse_endpoint(text: str) -> str:
    """Validate "ip:port" or "[v6]:port" and return it normalised; ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not _is_port(port) or int(port) == 0:
        raise ValueError(f"endpoint {text!r}: expected IP:PORT")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"endpoint {text!r}: {host!r} is not an IP address") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def is_endpoint(text: str) -> bool:
    """Whether text is an IP:PORT that parse_endpoint accepts."""
    try:
        parse_endpoint(text)
    except ValueError:
        return False
    return True


def _is_port(text: str) -> bool:
    """0..65535 in ASCII digits ('²'.isdigit() is true, and int() of 5,000 digits raises)."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) < 65536


def _has_space(text: str) -> bool:
    return any(c.isspace() for c in text)
