"""admin.conf: the file `cvlan --config` reads (server URL, token, CA PEM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AdminConfig:
    server: str = ""
    token: str = ""
    ca_pem: str = ""


def parse_admin_conf(text: str) -> AdminConfig:
    """Parse `key = value` lines; `ca =` is followed by the PEM, each line indented."""
    cfg = AdminConfig()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {i}: expected 'key = value'")
        key, value = key.strip(), value.strip()
        if key == "server":
            cfg.server = value
        elif key == "token":
            cfg.token = value
        elif key == "ca":
            pem = [value] if value else []
            while i < len(lines) and lines[i].startswith((" ", "\t")):
                pem.append(lines[i].strip())
                i += 1
            cfg.ca_pem = "\n".join(pem) + "\n"
        else:
            raise ValueError(f"line {i}: unknown key {key!r}")
    return cfg


def load_admin_conf(path: Path) -> AdminConfig:
    return parse_admin_conf(path.read_text())
