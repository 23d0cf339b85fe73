"""Who is calling the node API: the verified client certificate of the TLS connection, or the
certificate a trusted TLS-terminating proxy forwarded in X-Client-Cert.

The embedded listener asks for client certificates but does not require them (CERT_OPTIONAL), so
the management API keeps working without one; node routes require one here. OpenSSL has already
verified any certificate a connection carries against the controller CA; what is left is to read
the identity extensions (cached by certificate) and to check the validity period per request,
because a keep-alive connection can outlive its certificate."""

from __future__ import annotations

import datetime as dt
import ssl
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.proxies import TrustedProxies
from cvlan.wire.certid import CertIdentityError, NodeIdentity, extensions_of, node_identity

CACHE_SIZE = 200_000
NODE_KIND = "node"
PROXY_CERT_HEADER = "X-Client-Cert"


def parse_identity(cert: x509.Certificate) -> NodeIdentity:
    if extensions_of(cert).get("kind") != NODE_KIND:
        raise DomainError(Kind.FORBIDDEN, "this certificate is not a node certificate")
    try:
        return node_identity(cert)
    except CertIdentityError as e:
        raise DomainError(
            Kind.UNAUTHENTICATED, "client certificate lacks the node identity extensions"
        ) from e


class IdentityResolver:
    """Maps a request to its NodeIdentity, with a bounded cache keyed by the certificate bytes."""

    def __init__(self, ca: CertificateAuthority, proxies: TrustedProxies) -> None:
        self.ca = ca
        self._cache: OrderedDict[bytes, NodeIdentity] = OrderedDict()
        self._by_conn: weakref.WeakKeyDictionary[ssl.SSLObject, NodeIdentity] = weakref.WeakKeyDictionary()
        """Per TLS connection: keep-alive polls skip re-reading the peer certificate."""
        self._proxies = proxies

    def optional(self, request: web.Request, now: dt.datetime) -> NodeIdentity | None:
        """The caller's identity, or None if the request carries no client certificate."""
        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        ident = self._by_conn.get(sslobj) if sslobj is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None and ident is None else None
        if ident is not None:
            pass  # the connection's certificate, parsed at its first request
        elif der and sslobj is not None:
            ident = self._cached(der, lambda: x509.load_der_x509_certificate(der))
            self._by_conn[sslobj] = ident
        else:
            header = request.headers.get(PROXY_CERT_HEADER)
            return self.forwarded(header.encode() if header else None, request.remote, now)
        return _unexpired(ident, now)

    def forwarded(self, header: bytes | None, remote: str | None, now: dt.datetime) -> NodeIdentity | None:
        """The identity in a front's X-Client-Cert header, if the peer (remote) is a trusted front."""
        if not header or not self._proxies.believes(remote):
            return None
        ident = self._cached(header, lambda: self._verify_forwarded(header.decode("latin-1"), now))
        return _unexpired(ident, now)

    def require(self, request: web.Request, now: dt.datetime) -> NodeIdentity:
        return required(self.optional(request, now))

    def _cached(self, key: bytes, load: Callable[[], x509.Certificate]) -> NodeIdentity:
        ident = self._cache.get(key)
        if ident is not None:
            return ident
        try:
            cert = load()
        except ValueError as e:
            raise DomainError(Kind.UNAUTHENTICATED, "client certificate cannot be parsed") from e
        ident = parse_identity(cert)
        self._cache[key] = ident
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return ident

    def _verify_forwarded(self, header: str, now: dt.datetime) -> x509.Certificate:
        """A proxy-forwarded PEM (URL-escaped, as nginx $ssl_client_escaped_cert): check it is ours."""
        cert = x509.load_pem_x509_certificate(urllib.parse.unquote(header).encode())
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise DomainError(Kind.UNAUTHENTICATED, "forwarded client certificate is not from this CA") from e
        if cert.not_valid_before_utc > now:
            raise DomainError(Kind.UNAUTHENTICATED, "forwarded client certificate is not valid yet")
        return cert


def required(ident: NodeIdentity | None) -> NodeIdentity:
    if ident is None:
        raise DomainError(
            Kind.UNAUTHENTICATED,
            "a node client certificate is required (mutual TLS)",
            {"reason": "no_certificate"},
        )
    return ident


def _unexpired(ident: NodeIdentity, now: dt.datetime) -> NodeIdentity:
    if ident.not_after <= now:
        raise DomainError(
            Kind.UNAUTHENTICATED,
            f"the node certificate expired at {ident.not_after:%Y-%m-%d %H:%M:%S}Z; "
            "re-enrol the node with a new token",
            {"reason": "certificate_expired"},
        )
    return ident
