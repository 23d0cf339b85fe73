"""What the relays' and the vrouters' API share: request bodies, the CA they fetch, the certificate
they are issued, and who is calling (by the certificate the controller's TLS listener verified)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, ValidationError

from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CA_KEY
from cvlan.controller.ops import infra, registration
from cvlan.controller.ops.context import Tx
from cvlan.controller.ops.infra import Infra
from cvlan.wire.certid import OID_KIND, extensions_of


class In(BaseModel):
    """Base of the daemons' request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


async def read_body(request: web.Request, model: type[In]) -> Any:
    raw = await request.read()
    try:
        return model.model_validate(json.loads(raw or b"{}"))
    except (ValueError, UnicodeDecodeError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        where = ".".join(str(x) for x in first["loc"]) + ": " + first["msg"] if first else str(e)
        raise DomainError(Kind.INVALID, f"invalid request body: {where}") from e


async def ca_handler(request: web.Request) -> web.Response:
    """GET /v1/{relay,vrouter}/ca: the CA certificate (public; the daemon checks it against its pin)."""
    return web.Response(text=request.app[CA_KEY].cert_pem.decode(), content_type="application/x-pem-file")


def certify(
    ca: CertificateAuthority,
    x: Infra,
    csr_pem: str,
    lifetime: dt.timedelta,
    now: dt.datetime,
    server_hosts: list[str] | None = None,
) -> dict[str, str]:
    """Issue a registering relay or vrouter (x) its certificate, checked and signed like a node's (a
    relay's also serves its TLS listener: server_hosts), and note it and the call on x. The answer's
    cert_pem and ca_pem."""
    kind = infra.kind_of(type(x))
    cert = ca.issue_client(
        registration.load_csr(csr_pem),
        common_name=f"{kind}:{x.name}",
        lifetime=lifetime,
        identity={OID_KIND: kind},
        now=now,
        server_hosts=server_hosts,
    )
    x.cert_serial = format(cert.serial_number, "x")
    x.last_seen = now
    return {
        "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "ca_pem": ca.cert_pem.decode(),
    }


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The client certificate the embedded TLS listener verified against the CA, if any."""
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return x509.load_der_x509_certificate(der) if der else None


async def caller(s: Tx, request: web.Request, model: type[Infra]) -> Infra:
    """The relay or vrouter (model) calling, by its current client certificate."""
    kind = infra.kind_of(model)
    cert = peer_certificate(request)
    if cert is None or extensions_of(cert).get("kind") != kind:
        raise DomainError(Kind.UNAUTHENTICATED, f"this call needs the {kind}'s client certificate")
    return await infra.by_cert_serial(s, model, cert.serial_number)
