"""admin.conf, the file the controller writes on first start and `cvlan --config`, cvlan-sim, the demo and
the benchmarks read: `server = URL`, `token = T` and `ca =` followed by the CA PEM, each line indented.

One format, one parser: unknown keys and lines without `=` are errors (a typo must not pass
silently); `complete=False` lets the admin CLI take the server or token from flags instead."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cvlan.common.files import write_atomic

__all__ = ["AdminConf", "AdminConfError", "load", "parse", "render", "write"]

_KEYS = ("server", "token", "ca")


class AdminConfError(ValueError):
    """admin.conf is missing, unreadable, malformed or (where required) incomplete."""


@dataclass(frozen=True)
class AdminConf:
    server: str = ""
    token: str = ""
    ca_pem: str = ""

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the controller's CA (the pin of the admin file)."""
        if not self.ca_pem:
            return ssl.create_default_context()
        return ssl.create_default_context(cadata=self.ca_pem)


def parse(text: str, *, complete: bool = True) -> AdminConf:
    """The settings in text; complete: server and token must both be present."""
    fields: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise AdminConfError(f"admin.conf line {i}: expected 'key = value'")
        if key not in _KEYS:
            raise AdminConfError(f"admin.conf line {i}: unknown key {key!r}")
        if key == "ca":
            pem = [value] if value else []
            while i < len(lines) and lines[i].startswith((" ", "\t")):
                pem.append(lines[i].strip())
                i += 1
            value = "\n".join(pem) + "\n" if pem else ""
        fields[key] = value
    for need in ("server", "token") if complete else ():
        if not fields.get(need):
            raise AdminConfError(f"admin.conf: missing '{need} = ...'")
    return AdminConf(fields.get("server", "").rstrip("/"), fields.get("token", ""), fields.get("ca", ""))


def load(path: Path, *, complete: bool = True) -> AdminConf:
    """The settings in the file at path; every error names the file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise AdminConfError(f"cannot read {path}: {e.strerror}") from e
    try:
        return parse(text, complete=complete)
    except AdminConfError as e:
        raise AdminConfError(f"{path}: {e}") from None


def render(server: str, token: str, ca_pem: str) -> str:
    ca_lines = "\n".join("  " + line for line in ca_pem.strip().splitlines())
    return (
        "# CVLAN admin configuration: read by `cvlan --config FILE`. Keep it secret (mode 0600).\n"
        f"server = {server}\n"
        f"token = {token}\n"
        "ca =\n"
        f"{ca_lines}\n"
    )


def write(path: Path, server: str, token: str, ca_pem: str) -> None:
    """Write admin.conf atomically, mode 0600 (it holds a platform-admin token)."""
    write_atomic(path, render(server, token, ca_pem), 0o600)
