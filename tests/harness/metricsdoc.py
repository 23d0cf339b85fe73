"""The metric names docs/METRICS.md documents (its tables, per daemon), what a /metrics body exports,
and a plain-HTTP scrape from inside a namespace: so tests hold code, docs, dashboard and alerts to one
list of names."""

from __future__ import annotations

import re
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cvlan.devtools.lab.nsconnect import socket_in_netns

DOC = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"
TYPES = ("counter", "gauge", "histogram")
_ROW = re.compile(r"^\|\s*`(cvlan_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|")
_HEADING = re.compile(r"^##\s+(\S+)")


def documented(doc: Path = DOC) -> dict[str, dict[str, str]]:
    """Section (the first word of a `## ` heading: cvland, cvlan-ctrl, ...) -> {metric: type}."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    for line in doc.read_text().splitlines():
        h = _HEADING.match(line)
        if h:
            section = h.group(1)
            continue
        m = _ROW.match(line)
        if m:
            name, typ = m.groups()
            assert typ in TYPES, f"{doc.name}: {name} has type {typ!r}, not one of {TYPES}"
            out.setdefault(section, {})[name] = typ
    return out


def all_documented(doc: Path = DOC) -> set[str]:
    return {name for names in documented(doc).values() for name in names}


def exported(text: str) -> dict[str, str]:
    """Names a /metrics body exports -> type, as a person would write them: counters with _total,
    histograms by family name. Families without samples count too (their HELP and TYPE are there)."""
    out: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = fam.type
    return out


def base_name(name: str) -> str:
    """A series name in a query -> the name documented for it (histogram series -> family)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def query_names(expr: str) -> set[str]:
    """The cvlan_* metric names a PromQL expression reads (label values in quotes are skipped)."""
    unquoted = re.sub(r'"[^"]*"', '""', expr)
    return {base_name(n) for n in re.findall(r"\bcvlan_[a-z0-9_]+\b", unquoted)}


def scrape(ns: str, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> str:
    """GET /metrics over plain HTTP from inside namespace ns; the body (raises on a non-200)."""
    sock = socket_in_netns(ns)
    sock.settimeout(timeout)
    with sock:
        sock.connect((host, port))
        sock.sendall(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"]:
        raise RuntimeError(f"GET http://{host}:{port}/metrics in {ns}: {status.decode(errors='replace')}")
    return body.decode()
