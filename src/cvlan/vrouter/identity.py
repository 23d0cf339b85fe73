"""The vrouter's identity: registered once with its bootstrap token, then kept in the state dir.

State dir (0700; every file 0600): wg.key (WireGuard private key, hex), vrouter.key / vrouter.crt
(TLS client key and certificate), ca.crt, vrouter.json (server URL, name, region, endpoint) and
token (the bootstrap token, kept so the vrouter can register again when its certificate nears
expiry; the controller accepts it until the vrouter is deleted). A restart needs no token.

Calls (aiohttp directly: apps do not share code): GET /v1/vrouter/ca (checked against --ca-pin
before anything secret is sent), POST /v1/vrouter/register, POST /v1/vrouter/poll (mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvlan.common.files import write_atomic
from cvlan.dataplane.wgconfig import KeyHex, generate_keypair, parse_key, public_of
from cvlan.vrouter.settings import VrouterSettings

log = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=15)


class ControllerError(Exception):
    """A call to the controller failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


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


def ca_fingerprint(ca_pem: str) -> str:
    der = x509.load_pem_x509_certificate(ca_pem.encode()).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    """True while less than two thirds of the certificate's lifetime has passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now < start + (end - start) * 2 / 3


def load_identity(d: Path) -> Identity | None:
    meta = d / "vrouter.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return Identity(
        info["server"],
        info["name"],
        info["region"],
        info["endpoint"],
        parse_key((d / "wg.key").read_text(), "wg.key"),
        d / "vrouter.crt",
        d / "vrouter.key",
        (d / "ca.crt").read_text(),
    )


def _wg_key(d: Path) -> KeyHex:
    """The WireGuard key of this vrouter: kept across re-registrations, created on first start."""
    p = d / "wg.key"
    if p.exists():
        return parse_key(p.read_text(), "wg.key")
    priv, _ = generate_keypair()
    write_atomic(p, priv, 0o600)
    return priv


async def fetch_pinned_ca(server: str, pin: str) -> str:
    """The controller CA, accepted only if its fingerprint equals pin."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as s,
            s.get(server + "/v1/vrouter/ca", ssl=insecure) as r,
        ):
            if r.status != 200:
                raise ControllerError(f"fetch controller CA: http {r.status}", retryable=r.status >= 500)
            pem = await r.text()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ControllerError(f"fetch controller CA: {e or type(e).__name__}", retryable=True) from e
    if ca_fingerprint(pem) != pin:
        raise ControllerError(f"controller CA fingerprint {ca_fingerprint(pem)} does not match --ca-pin")
    return pem


async def register(settings: VrouterSettings, server: str, token: str) -> Identity:
    """Send the WireGuard public key and a CSR with the bootstrap token; store the answer (0600)."""
    d = settings.state_dir
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    ca_pem = await fetch_pinned_ca(server, settings.ca_pin) if settings.ca_pin else None
    wg = _wg_key(d)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvlan-vrouter")]))
        .sign(key, hashes.SHA256())
    )
    body = {
        "token": token,
        "wg_public_key": public_of(wg),
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
    }
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    out = await post(server + "/v1/vrouter/register", body, ctx)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(d / "vrouter.key", key_pem, 0o600)
    write_atomic(d / "vrouter.crt", out["cert_pem"], 0o600)
    write_atomic(d / "ca.crt", out["ca_pem"], 0o600)
    write_atomic(d / "token", token, 0o600)
    meta = {"server": server, **{k: out[k] for k in ("name", "region", "endpoint")}}
    write_atomic(d / "vrouter.json", json.dumps(meta, indent=1), 0o600)
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
        saved_token = (d / "token").read_text().strip() if (d / "token").exists() else ""
    except (OSError, ValueError, KeyError) as e:
        raise ControllerError(f"read vrouter state in {d}: {e}") from e
    if ident is not None and not settings.token and fresh(ident.cert, now):
        return ident
    server = settings.server or (ident.server if ident else "")
    token = settings.token or saved_token
    if not server:
        raise ControllerError(f"no vrouter identity in {d}: give --server and --token")
    if not token:
        raise ControllerError(f"no vrouter identity in {d} and no --token given")
    return await register(settings, server, token)


async def renew(settings: VrouterSettings, ident: Identity) -> Identity:
    """Register again with the saved bootstrap token (same WireGuard key, new TLS key and certificate)."""
    try:
        token = (settings.state_dir / "token").read_text().strip()
    except OSError as e:
        raise ControllerError(f"renew the vrouter certificate: no saved token: {e}") from e
    return await register(settings, ident.server, token)


async def post(url: str, body: dict[str, Any], ctx: ssl.SSLContext, timeout: float = 15) -> Any:
    """POST JSON; the decoded answer, or ControllerError with the controller's one-line message."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
            s.post(url, json=body, ssl=ctx) as r,
        ):
            text = await r.text()
            if r.status != 200:
                try:
                    msg = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = text[:200]
                raise ControllerError(f"{url}: http {r.status}: {msg}", retryable=r.status >= 500)
            return json.loads(text)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ControllerError(f"{url}: {e or type(e).__name__}", retryable=True) from e
