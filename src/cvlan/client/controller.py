"""Async client of the controller's node API (/v1/...), used by cvlan-ctrl and the simulator.

Errors are ControlError with .retryable (STYLE C9): transport failures, 429 and 5xx can be retried
(with cvlan.common.backoff.Backoff); a bad token, a revoked node or a wrong CA cannot."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import TypeVar

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.message import Message

from cvlan.client import tls
from cvlan.common.pki import ca_fingerprint
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb

M = TypeVar("M", bound=Message)
RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
KEEPALIVE_S = 120.0
"""Client keep-alive: longer than any poll interval, so polls reuse one TLS connection."""


class ControlError(Exception):
    """A node API call failed. message is one line, fit for an operator."""

    def __init__(
        self, message: str, *, retryable: bool, status: int = 0, code: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.code = code
        self.reason = reason
        """Machine-readable detail from the controller: revoked, certificate_expired, ..."""


def error_for_status(status: int, body: bytes) -> ControlError:
    code, msg, reason = "http_error", body[:200].decode(errors="replace"), ""
    try:
        err = json.loads(body)["error"]
        code, msg = str(err.get("code", code)), str(err.get("message", msg))
        details = err.get("details")
        if isinstance(details, dict):
            reason = str(details.get("reason", ""))
    except (ValueError, KeyError, TypeError):
        pass
    return ControlError(
        f"controller refused: {msg} (http {status})",
        retryable=status in RETRYABLE_STATUS,
        status=status,
        code=code,
        reason=reason,
    )


class NodeApiClient:
    """One node's connection to the controller: verified against the pinned CA, mTLS once enrolled."""

    def __init__(
        self,
        server: str,
        ca_pem: str,
        cert_pem: str | None = None,
        key_pem: str | None = None,
        *,
        timeout: float = 20.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.ca_pem = ca_pem
        self.timeout = timeout
        self._ssl = tls.client_context(ca_pem, cert_pem, key_pem)
        self._not_after = tls.cert_not_after(cert_pem) if cert_pem else None
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    async def discover_pinned(server: str, pin: str, *, timeout: float = 10.0) -> pb.DiscoverResponse:
        """Fetch discover without trusting anything yet, check its CA against pin, then fetch it again over
        a connection verified with that CA. Nothing secret is sent before both checks pass."""
        want = tls.normalize_pin(pin)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            raw = await _get(s, server.rstrip("/") + "/v1/discover", tls.unverified_context())
        d = _decode(pb.DiscoverResponse, raw)
        try:
            got = ca_fingerprint(d.ca_pem)
        except ValueError as e:
            raise ControlError("controller sent no valid CA certificate", retryable=False) from e
        if got != want:
            raise ControlError(
                f"controller CA {got} does not match the pinned {want}; refusing to talk to {server}",
                retryable=False,
                reason="wrong_ca",
            )
        c = NodeApiClient(server, d.ca_pem, timeout=timeout)
        try:
            return await c.discover()
        finally:
            await c.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection, one request at a time (HTTP/1.1): the TLS front holds one connection
            # a node, and a report made while a long-poll is held goes when the poll is answered
            # (report(wait_s=...)), not on a second TLS connection with its own handshake.
            conn = aiohttp.TCPConnector(ssl=self._ssl, limit=1, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=conn)
        return self._session

    def set_identity(self, cert_pem: str, key_pem: str) -> None:
        """Use a new client certificate from the next call on (the old connections are dropped)."""
        self._ssl = tls.client_context(self.ca_pem, cert_pem, key_pem)
        self._not_after = tls.cert_not_after(cert_pem)
        old, self._session = self._session, None
        if old is not None and not old.closed:
            asyncio.get_running_loop().create_task(old.close())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, path: str, req: Message, cls: type[M], timeout: float | None = None) -> M:
        if self._not_after is not None and self._not_after <= time.time():
            # The server would only reset the TLS connection; say what is wrong instead.
            raise ControlError(
                "the node certificate has expired; re-enrol the node with a new token",
                retryable=False,
                reason="certificate_expired",
            )
        url = self.server + path
        t = aiohttp.ClientTimeout(total=timeout or self.timeout)
        try:
            async with self._sess().post(
                url, data=req.SerializeToString(), timeout=t, headers={"Content-Type": wire.CT_PROTO}
            ) as r:
                body = await r.read()
                if r.status != 200:
                    raise error_for_status(r.status, body)
        except ControlError:
            raise
        except BaseException as e:
            raise transport_error(self.server, e) from e
        return _decode(cls, body)

    async def discover(self) -> pb.DiscoverResponse:
        try:
            raw = await _get(self._sess(), self.server + "/v1/discover", self._ssl, self.timeout)
        except ControlError:
            raise
        return _decode(pb.DiscoverResponse, raw)

    async def register(
        self,
        token: str,
        wg_public_key: bytes,
        csr_pem: str,
        hostname: str,
        os_info: str = "",
        route_advert: pb.RouteAdvert | None = None,
    ) -> pb.RegisterResponse:
        req = wire.register_request(token, wg_public_key, csr_pem, hostname, os_info, route_advert)
        return await self._call("/v1/register", req, pb.RegisterResponse)

    async def reauthenticate(
        self, token: str, wg_private_key: bytes, csr_pem: str, old_cert_pem: str, old_key_pem: str
    ) -> pb.RegisterResponse:
        """Register again as the same node after its certificate expired: a new token (or "" to ask a
        tenant admin's approval), the last certificate and a signature by its key, and a proof that
        we hold the WireGuard private key."""
        d = await self.discover()
        if len(d.reauth_public_key) != 32:
            raise ControlError("this controller does not support re-authentication", retryable=False)
        wg = x25519.X25519PrivateKey.from_private_bytes(wg_private_key)
        wg_public = wg.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = wire.reauth_message(token, wg_public, csr_pem)
        shared = wg.exchange(x25519.X25519PublicKey.from_public_bytes(d.reauth_public_key))
        req = wire.register_request(token, wg_public, csr_pem)
        req.previous_certificate_pem = old_cert_pem
        req.previous_key_signature = tls.sign(old_key_pem, message)
        req.wg_key_proof = wire.wg_key_proof(shared, message)
        return await self._call("/v1/register", req, pb.RegisterResponse)

    async def poll(
        self,
        map_version: int,
        endpoints: list[str] | None = None,
        health: pb.HealthSummary | None = None,
        home_relay_region: str = "",
        long_poll_s: int = 0,
        route_advert: pb.RouteAdvert | None = None,
    ) -> pb.PollResponse:
        req = wire.poll_request(map_version, endpoints, health, home_relay_region, long_poll_s, route_advert)
        return await self._call("/v1/poll", req, pb.PollResponse, timeout=self.timeout + long_poll_s)

    async def renew(self, csr_pem: str) -> pb.RenewResponse:
        req = wire.renew_request(csr_pem)
        return await self._call("/v1/renew", req, pb.RenewResponse)

    async def report(
        self, denied: list[pb.DeniedFlow], health: pb.HealthSummary | None = None, wait_s: float = 0.0
    ) -> pb.ReportResponse:
        """Deliver a report; wait_s: how long a long-poll already held on the connection may make it
        wait (the client's one connection carries one request at a time)."""
        req = pb.ReportRequest(capability_version=wire.CAPABILITY_VERSION, denied_flows=denied)
        if health is not None:
            req.health.CopyFrom(health)
        return await self._call("/v1/report", req, pb.ReportResponse, timeout=self.timeout + wait_s)


async def _get(s: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, timeout: float = 10.0) -> bytes:
    try:
        async with s.get(
            url, ssl=ctx, timeout=aiohttp.ClientTimeout(total=timeout), headers={"Accept": wire.CT_PROTO}
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise error_for_status(r.status, body)
            return body
    except ControlError:
        raise
    except BaseException as e:
        raise transport_error(url, e) from e


def _decode(cls: type[M], body: bytes) -> M:
    try:
        return wire.decode(cls, body)
    except wire.WireError as e:
        raise ControlError(f"controller answered something unreadable: {e}", retryable=True) from e


def transport_error(server: str, e: BaseException) -> ControlError:
    """Classify a failure below HTTP. Certificate problems are final; the rest can be retried."""
    if isinstance(e, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        raise e
    cert_err = _find(e, ssl.SSLCertVerificationError)
    if cert_err is not None:
        return ControlError(
            f"controller {server} presented a certificate the pinned CA did not sign: "
            f"{getattr(cert_err, 'verify_message', cert_err)}",
            retryable=False,
            reason="wrong_ca",
        )
    ssl_err = _find(e, ssl.SSLError)
    if ssl_err is not None and "expired" in str(ssl_err).lower():
        return ControlError(
            "the controller refused our certificate as expired; re-enrol the node with a new token",
            retryable=False,
            reason="certificate_expired",
        )
    if ssl_err is not None and "alert" in str(ssl_err).lower():
        return ControlError(
            f"controller {server} rejected our client certificate: {ssl_err}",
            retryable=False,
            reason="certificate_rejected",
        )
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return ControlError(f"controller {server} did not answer in time", retryable=True, reason="timeout")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ControlError(f"cannot reach controller {server}: {msg}", retryable=True, reason="unreachable")


def _find(e: BaseException | None, cls: type[BaseException]) -> BaseException | None:
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, cls):
            return e
        e = (
            e.__cause__
            or e.__context__
            or getattr(e, "os_error", None)
            or getattr(e, "certificate_error", None)
        )
        seen += 1
    return None
