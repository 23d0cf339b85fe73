"""Certificate helpers every side shares: the CA pin, when to renew, keys and CSRs. Pure (no I/O)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

__all__ = ["KeyType", "SigningKey", "ca_fingerprint", "csr_for", "fresh", "new_csr", "new_key"]


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
