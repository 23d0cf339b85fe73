"""What infrastructure daemons (relays, vrouters) share to get and keep a controller-issued identity.

A daemon is started once with a bootstrap token and the CA pin: it fetches the controller CA over
an unauthenticated TLS connection and accepts it only if its fingerprint equals the pin (trust on
first use, with a pin, as kubeadm does), then posts a CSR with the token and stores the answer in
its state dir, every file 0600. It registers again when two thirds of the certificate's lifetime
have passed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
from typing import Any, Literal

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

TIMEOUT_S = 15.0


class ControllerCallError(Exception):
    """A call to the controller failed. ``retryable`` says whether trying again may help; ``status``
    is the HTTP status when the controller (or whatever answered at its URL) answered, else 0."""

    def __init__(self, message: str, retryable: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def retryable_status(status: int) -> bool:
    """Whether an HTTP error status may go away by itself (server trouble, overload, timeout)."""
    return status >= 500 or status in (408, 429)


def ca_fingerprint(ca_pem: str) -> str:
    """sha256:HEX of the CA certificate's DER, the form `--ca-pin` takes."""
    der = x509.load_pem_x509_certificate(ca_pem.encode()).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    """True while less than two thirds of the certificate's lifetime has passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now < start + (end - start) * 2 / 3


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
"""The key types the controller signs certificates for (see registration.load_csr)."""
KeyType = Literal["p256", "ed25519"]


def csr_for(key: SigningKey, common_name: str) -> str:
    """A CSR (PEM) for key; the controller ignores the subject and signs its own identity in."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def new_key(key_type: KeyType = "p256") -> SigningKey:
    """A fresh key: p256 (ECDSA P-256) or ed25519."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r}: expected p256 or ed25519")


def new_csr(common_name: str, key_type: KeyType = "p256") -> tuple[bytes, str]:
    """A fresh key (PKCS#8 PEM, to be stored 0600) and a CSR for it (PEM)."""
    key = new_key(key_type)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr_for(key, common_name)


def verifying_context(ca_pem: str | None) -> ssl.SSLContext:
    """TLS towards the controller: its CA once known (pinned), else the system's trust store."""
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()


async def fetch_pinned_ca(url: str, pin: str) -> str:
    """The controller CA served at url, accepted only if its fingerprint equals pin."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as s,
            s.get(url, ssl=insecure) as r,
        ):
            if r.status != 200:
                raise ControllerCallError(
                    f"fetch controller CA: http {r.status}", retryable_status(r.status), r.status
                )
            pem = await r.text()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ControllerCallError(f"fetch controller CA: {e or type(e).__name__}", retryable=True) from e
    if ca_fingerprint(pem) != pin:
        raise ControllerCallError(f"controller CA fingerprint {ca_fingerprint(pem)} does not match --ca-pin")
    return pem


async def post_json(url: str, body: dict[str, Any], ctx: ssl.SSLContext, timeout: float = TIMEOUT_S) -> Any:
    """POST JSON; the decoded answer, or ControllerCallError with the controller's one-line message."""
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
                raise ControllerCallError(
                    f"{url}: http {r.status}: {msg}", retryable_status(r.status), r.status
                )
            return json.loads(text)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ControllerCallError(f"{url}: {e or type(e).__name__}", retryable=True) from e
