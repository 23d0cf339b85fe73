"""The certificate identity the controller CA writes reads back the same."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvlan.controller import ca as ctrl_ca
from cvlan.wire import certid


def _cert(tmp_path: Path, ident: dict[x509.ObjectIdentifier, str]) -> x509.Certificate:
    authority = ctrl_ca.CertificateAuthority.load_or_create(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
        .sign(key, hashes.SHA256())
    )
    return authority.issue_client(
        csr.public_bytes(serialization.Encoding.PEM),
        common_name="n",
        lifetime=dt.timedelta(hours=1),
        identity=ident,
    )


def test_node_identity_round_trip(tmp_path: Path) -> None:
    key = bytes(range(32))
    cert = _cert(
        tmp_path,
        {
            certid.OID_NODE_ID: "7",
            certid.OID_TENANT_ID: "2",
            certid.OID_CVLAN_ID: "3",
            certid.OID_WG_KEY: key.hex(),
        },
    )
    ident = certid.node_identity(cert)
    assert (ident.node_id, ident.tenant_id, ident.cvlan_id, ident.wg_key) == (7, 2, 3, key)
    assert ident.serial == cert.serial_number and ident.short() == key.hex()[:8]
    assert ident.not_after == cert.not_valid_after_utc


def test_relay_certificate_is_not_a_node(tmp_path: Path) -> None:
    cert = _cert(tmp_path, {certid.OID_KIND: "relay"})
    with pytest.raises(
        certid.CertIdentityError, match=r"^certificate is a relay certificate, not a node certificate$"
    ):
        certid.node_identity(cert)


def test_incomplete_identity(tmp_path: Path) -> None:
    cert = _cert(tmp_path, {certid.OID_NODE_ID: "7", certid.OID_WG_KEY: "00" * 31})
    with pytest.raises(
        certid.CertIdentityError, match=r"^certificate does not carry a complete node identity$"
    ):
        certid.node_identity(cert)
