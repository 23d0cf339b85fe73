"""Node-side TLS material: key + CSR generation, CA pins, and SSL contexts from PEM in memory."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cvlan.common.pki import KeyType, csr_for, new_csr

NODE_KEY_TYPE: KeyType = "ed25519"
"""A node's TLS key. Ed25519 rather than P-256: the TLS front keeps every connected node's parsed
certificate for the life of its connection, and an Ed25519 one takes less memory there (about 1.6 KB
per connection, bench/front/bench_front_memory.py). Keys made before keep their type: both verify."""


def new_key_and_csr(common_name: str = "cvlan-node") -> tuple[str, str]:
    """A fresh node key (PEM, PKCS#8) and a CSR for it (PEM)."""
    key_pem, csr = new_csr(common_name, NODE_KEY_TYPE)
    return key_pem.decode(), csr


def csr_for_key(key_pem: str, common_name: str = "cvlan-node") -> str:
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return csr_for(key, common_name)


def sign(key_pem: str, message: bytes) -> bytes:
    """A signature of message with a node key (Ed25519, or ECDSA P-256 with SHA-256)."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def normalize_pin(pin: str) -> str:
    """Accept sha256:HEX, HEX, or HEX with colons; return sha256:hex (lower case)."""
    p = pin.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(p) != 64 or any(c not in "0123456789abcdef" for c in p):
        raise ValueError(f"CA pin {pin!r}: expected sha256: followed by 64 hex characters")
    return "sha256:" + p


def cert_not_after(cert_pem: str) -> float:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.timestamp()


def cert_not_before(cert_pem: str) -> float:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_before_utc.timestamp()


def client_context(ca_pem: str, cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
    """Trust only ca_pem; present cert/key if given. (ssl loads keys only from files: a private
    temporary directory holds them for the duration of the call.)"""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_pem and key_pem:
        with tempfile.TemporaryDirectory(prefix="cvlan-tls-") as d:
            os.chmod(d, 0o700)
            cp, kp = Path(d) / "c.pem", Path(d) / "k.pem"
            fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key_pem)
            cp.write_text(cert_pem)
            ctx.load_cert_chain(cp, kp)
    return ctx


def unverified_context() -> ssl.SSLContext:
    """For the first discover only: nothing secret is sent; the CA it returns is checked against the pin."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
