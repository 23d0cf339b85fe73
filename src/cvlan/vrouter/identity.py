"""The vrouter's identity: registered once with its bootstrap token, then kept in the state dir.

State dir (0700; every file 0600): wg.key (WireGuard private key, hex), vrouter.key / vrouter.crt
(TLS client key and certificate), ca.crt, vrouter.json (server URL, name, region, endpoint) and
token (the bootstrap token, kept so the vrouter can register again when its certificate nears
expiry; the controller accepts it until the vrouter is deleted). A restart needs no token.

Calls (through cvlan.client.bootstrap): GET /v1/vrouter/ca (checked against --ca-pin before
anything secret is sent), POST /v1/vrouter/register, POST /v1/vrouter/poll (mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cvlan.client.bootstrap import (
    ControllerCallError,
    StateDir,
    fetch_pinned_ca,
    post_json,
    verifying_context,
)
from cvlan.common.files import write_atomic
from cvlan.common.pki import fresh, new_csr
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.keys import KeyHex, generate_keypair, parse_key, public_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    server: str
    name: str
    region: str
    endpoint: str
    wg_private_key: KeyHex
    cert_file: Path
    key_file: Path
    ca_pem: str

    def __repr__(self) -> str:  # never print the private key
        return f"Identity(name={self.name!r}, region={self.region!r})"

    @property
    def wg_public_key(self) -> KeyHex:
        return public_of(self.wg_private_key)

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def load_identity(d: Path) -> Identity | None:
    store = StateDir(d, "vrouter")
    info = store.meta()
    if info is None:
        return None
    return Identity(
        info["server"],
        info["name"],
        info["region"],
        info["endpoint"],
        parse_key((d / "wg.key").read_text(), "wg.key"),
        store.cert_file,
        store.key_file,
        store.ca_pem(),
    )


def _wg_key(d: Path) -> KeyHex:
    """The WireGuard key of this vrouter: kept across re-registrations, created on first start."""
    p = d / "wg.key"
    if p.exists():
        return parse_key(p.read_text(), "wg.key")
    priv, _ = generate_keypair()
    write_atomic(p, priv, 0o600)
    return priv


async def register(settings: VrouterSettings, server: str, token: str) -> Identity:
    """Send the WireGuard public key and a CSR with the bootstrap token; store the answer (0600)."""
    d = settings.state_dir
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    ca_pem = await fetch_pinned_ca(server + "/v1/vrouter/ca", settings.ca_pin) if settings.ca_pin else None
    wg = _wg_key(d)
    key_pem, csr_pem = new_csr("cvlan-vrouter")
    body = {"token": token, "wg_public_key": public_of(wg), "csr_pem": csr_pem}
    out = await post_json(server + "/v1/vrouter/register", body, verifying_context(ca_pem))
    meta = {"server": server, **{k: out[k] for k in ("name", "region", "endpoint")}}
    StateDir(d, "vrouter").save(key_pem, out, meta, token)
    log.info("vrouter registered", extra={"relay_region": out["region"]})
    ident = load_identity(d)
    assert ident is not None
    return ident


async def ensure_identity(settings: VrouterSettings, now: dt.datetime | None = None) -> Identity:
    """The stored identity while its certificate is fresh; otherwise register (again) with the
    token given, or the one saved at the first registration."""
    now = now or dt.datetime.now(dt.UTC)
    d = settings.state_dir
    try:
        ident = load_identity(d)
        saved_token = StateDir(d, "vrouter").saved_token()
    except (OSError, ValueError, KeyError) as e:
        raise ControllerCallError(f"read vrouter state in {d}: {e}") from e
    if ident is not None and not settings.token and fresh(ident.cert, now):
        return ident
    server = settings.server or (ident.server if ident else "")
    token = settings.token or saved_token
    if not server:
        raise ControllerCallError(f"no vrouter identity in {d}: give --server and --token")
    if not token:
        raise ControllerCallError(f"no vrouter identity in {d} and no --token given")
    return await register(settings, server, token)


async def renew(settings: VrouterSettings, ident: Identity) -> Identity:
    """Register again with the saved bootstrap token (same WireGuard key, new TLS key and certificate)."""
    try:
        token = (settings.state_dir / "token").read_text().strip()
    except OSError as e:
        raise ControllerCallError(f"renew the vrouter certificate: no saved token: {e}") from e
    return await register(settings, ident.server, token)
