"""The controller's certificate authority: server certificates and short-lived node certificates.

The CA key is written 0600 on first start and never leaves the data dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from cvlan.common.files import write_atomic
from cvlan.common.pki import ca_fingerprint


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """sha256:HEX of the CA certificate: what a node pins before it trusts a controller."""
        return ca_fingerprint(self.cert_pem.decode())

    def reauth_key(self) -> x25519.X25519PrivateKey:
        """The X25519 key re-authenticating nodes prove their WireGuard key against (NODES.md). Derived
        from the CA key, so every controller process sharing the CA has the same one."""
        der = self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cvlan-reauth-x25519").derive(der)
        return x25519.X25519PrivateKey.from_private_bytes(seed)

    def reauth_public(self) -> bytes:
        return (
            self.reauth_key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def load_or_create(cls, directory: Path, now: dt.datetime | None = None) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        now = now or dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CVLAN controller CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(key, cert)

    def _builder(
        self, subject: x509.Name, public_key: object, lifetime: dt.timedelta, now: dt.datetime
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def issue_server(
        self, hosts: list[str], directory: Path, now: dt.datetime | None = None
    ) -> tuple[Path, Path]:
        """Write server.key (0600) and server.crt for the given host names and addresses."""
        now = now or dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
                key.public_key(),
                dt.timedelta(days=825),
                now,
            )
            .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        kp, cp = directory / "server.key", directory / "server.crt"
        write_atomic(
            kp,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        write_atomic(cp, cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, 0o644)
        return cp, kp

    def issue_client(
        self,
        csr: bytes | x509.CertificateSigningRequest,
        *,
        common_name: str,
        lifetime: dt.timedelta,
        identity: dict[ObjectIdentifier, str],
        now: dt.datetime | None = None,
        server_hosts: list[str] | None = None,
    ) -> x509.Certificate:
        """Sign a client certificate for a CSR whose signature checks, carrying the identity extensions.

        A parsed CSR is taken as checked (``registration.load_csr`` verifies what clients send);
        a PEM one is parsed and its signature verified here. With server_hosts the certificate also
        serves TLS for those names and addresses (a relay's listener authenticates with the same
        certificate it uses towards the controller)."""
        now = now or dt.datetime.now(dt.UTC)
        if isinstance(csr, bytes):
            csr = x509.load_pem_x509_csr(csr)
            if not csr.is_signature_valid:
                raise ValueError("CSR signature does not verify")
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        b = self._builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), csr.public_key(), lifetime, now
        )
        if server_hosts:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            b = b.add_extension(x509.SubjectAlternativeName(_sans(server_hosts)), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        for oid, value in identity.items():
            b = b.add_extension(x509.UnrecognizedExtension(oid, value.encode()), critical=False)
        return b.sign(self.key, hashes.SHA256())


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, everything else as DNS names."""
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return sans
