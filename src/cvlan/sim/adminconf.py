"""Read the controller's admin.conf: server URL, platform token and the CA that signs the server."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class AdminConfError(ValueError):
    """admin.conf is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class AdminConf:
    server: str
    token: str
    ca_pem: str

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the controller's CA (the pin of the admin file)."""
        ctx = ssl.create_default_context(cadata=self.ca_pem or None)
        if not self.ca_pem:
            ctx = ssl.create_default_context()
        return ctx


def parse(text: str) -> AdminConf:
    """Parse `server = URL`, `token = T` and `ca =` followed by indented PEM lines."""
    fields: dict[str, str] = {}
    ca_lines: list[str] = []
    in_ca = False
    for line in text.splitlines():
        if in_ca and line.startswith((" ", "\t")):
            ca_lines.append(line.strip())
            continue
        in_ca = False
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, sep, value = s.partition("=")
        if not sep:
            raise AdminConfError(f"admin.conf: expected 'key = value', got {s[:40]!r}")
        key, value = key.strip(), value.strip()
        if key == "ca":
            in_ca = True
            if value:
                ca_lines.append(value)
            continue
        fields[key] = value
    for need in ("server", "token"):
        if not fields.get(need):
            raise AdminConfError(f"admin.conf: missing '{need} = ...'")
    ca = "\n".join(ca_lines) + "\n" if ca_lines else ""
    return AdminConf(server=fields["server"].rstrip("/"), token=fields["token"], ca_pem=ca)


def load(path: Path) -> AdminConf:
    try:
        return parse(path.read_text())
    except OSError as e:
        raise AdminConfError(f"cannot read {path}: {e.strerror}") from e
