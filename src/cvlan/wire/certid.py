"""The identity a controller-issued certificate carries, read by services that are not the controller.

The controller CA writes these private-arc extensions and every reader (controller node API, relay)
parses them here: this module is their one definition. Each extension value is UTF-8 text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from cvlan.wire.ids import CvlanId, NodeId, TenantId

OID_BASE = "1.3.6.1.4.1.59999.1"
OID_NODE_ID = ObjectIdentifier(OID_BASE + ".1")
OID_TENANT_ID = ObjectIdentifier(OID_BASE + ".2")
OID_CVLAN_ID = ObjectIdentifier(OID_BASE + ".3")
OID_WG_KEY = ObjectIdentifier(OID_BASE + ".4")
OID_KIND = ObjectIdentifier(OID_BASE + ".5")

_NAMES = {
    OID_NODE_ID: "node_id",
    OID_TENANT_ID: "tenant_id",
    OID_CVLAN_ID: "cvlan_id",
    OID_WG_KEY: "wg_key",
    OID_KIND: "kind",
}


class CertIdentityError(ValueError):
    """A certificate that does not carry a complete node identity."""


def extensions_of(cert: x509.Certificate) -> dict[str, str]:
    """The identity extensions present in cert, by short name."""
    out: dict[str, str] = {}
    for ext in cert.extensions:
        if ext.oid in _NAMES and isinstance(ext.value, x509.UnrecognizedExtension):
            try:
                out[_NAMES[ext.oid]] = ext.value.value.decode()
            except UnicodeDecodeError:
                continue
    return out


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a node certificate says its holder is."""

    node_id: NodeId
    tenant_id: TenantId
    cvlan_id: CvlanId
    wg_key: bytes
    serial: int
    not_after: dt.datetime

    def short(self) -> str:
        return self.wg_key.hex()[:8]

    @property
    def not_after_unix(self) -> int:
        return int(self.not_after.timestamp())


def node_identity(cert: x509.Certificate) -> NodeIdentity:
    """The node identity of cert. Certificates of other kinds (relay, vrouter) are refused."""
    ext = extensions_of(cert)
    if ext.get("kind", "node") != "node":
        raise CertIdentityError(f"certificate is a {ext['kind']} certificate, not a node certificate")
    try:
        key = bytes.fromhex(ext["wg_key"])
        ident = NodeIdentity(
            NodeId(int(ext["node_id"])),
            TenantId(int(ext["tenant_id"])),
            CvlanId(int(ext["cvlan_id"])),
            key,
            cert.serial_number,
            cert.not_valid_after_utc,
        )
    except (KeyError, ValueError) as e:
        raise CertIdentityError("certificate does not carry a complete node identity") from e
    if len(key) != 32:
        raise CertIdentityError("certificate does not carry a complete node identity")
    return ident
