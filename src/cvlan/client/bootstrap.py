"""What infrastructure daemons (relays, vrouters) share to get and keep a controller-issued identity.

A daemon is started once with a bootstrap token and the CA pin: it fetches the controller CA over
an unauthenticated TLS connection and accepts it only if its fingerprint equals the pin (trust on
first use, with a pin, as kubeadm does), then posts a CSR with the token and stores the answer in
its state dir, every file 0600. It registers again when two thirds of the certificate's lifetime
have passed (cvlan.common.pki.fresh)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from cryptography import x509

from cvlan.common.files import write_atomic
from cvlan.common.pki import ca_fingerprint, fresh, new_csr

__all__ = [
    "TIMEOUT_S",
    "ControllerCallError",
    "ControllerIdentity",
    "StateDir",
    "ensure_identity",
    "fetch_pinned_ca",
    "post_json",
    "register",
    "verifying_context",
]

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


@dataclass(frozen=True)
class StateDir:
    """Where an infrastructure daemon keeps the identity the controller gave it, by kind ("relay",
    "vrouter"): KIND.key and KIND.crt (TLS client key and certificate), ca.crt, KIND.json (what the
    controller said about it) and token (the bootstrap token, so that the daemon can register again
    when its certificate nears expiry; the controller accepts it until the daemon is deleted). The
    directory is 0700 and every file 0600."""

    path: Path
    kind: str

    @property
    def key_file(self) -> Path:
        return self.path / f"{self.kind}.key"

    @property
    def cert_file(self) -> Path:
        return self.path / f"{self.kind}.crt"

    def create(self) -> None:
        """The directory, 0700 (kept if it exists)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)

    def save(self, key_pem: bytes, answer: dict[str, Any], meta: dict[str, Any], token: str) -> None:
        """Store a registration: the new key, the answer's certificate and CA, meta and the token."""
        self.create()
        write_atomic(self.key_file, key_pem, 0o600)
        write_atomic(self.cert_file, answer["cert_pem"], 0o600)
        write_atomic(self.path / "ca.crt", answer["ca_pem"], 0o600)
        write_atomic(self.path / "token", token, 0o600)
        write_atomic(self.path / f"{self.kind}.json", json.dumps(meta, indent=1), 0o600)

    def meta(self) -> dict[str, Any] | None:
        """What the last registration stored, or None before the first."""
        path = self.path / f"{self.kind}.json"
        if not path.exists():
            return None
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    def ca_pem(self) -> str:
        return (self.path / "ca.crt").read_text()

    def saved_token(self) -> str:
        """The bootstrap token of the last registration ("" if none was kept)."""
        path = self.path / "token"
        return path.read_text().strip() if path.exists() else ""


class ControllerIdentity:
    """What every registered daemon holds, whatever its kind: its TLS key and certificate files and
    the controller CA. A base for the kind's frozen dataclass, which declares these fields."""

    cert_file: Path
    key_file: Path
    ca_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        """TLS towards the controller: its CA, and this identity's certificate as client certificate."""
        ctx = verifying_context(self.ca_pem)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


async def register(
    store: StateDir,
    server: str,
    ca_pin: str,
    token: str,
    fields: Mapping[str, str],
    meta: Mapping[str, Any],
    keep: tuple[str, ...],
) -> dict[str, Any]:
    """Register as a daemon of store.kind: fetch the controller CA (checked against ca_pin, when
    given), post the token, fields and a fresh CSR to SERVER/v1/KIND/register, and store the answer
    with meta and the answer's keys named in keep (StateDir.save). The controller's answer."""
    ca_pem = await fetch_pinned_ca(f"{server}/v1/{store.kind}/ca", ca_pin) if ca_pin else None
    key_pem, csr_pem = new_csr(f"cvlan-{store.kind}")
    body = {"token": token, **fields, "csr_pem": csr_pem}
    out: dict[str, Any] = await post_json(
        f"{server}/v1/{store.kind}/register", body, verifying_context(ca_pem)
    )
    store.save(key_pem, out, {**meta, **{k: out[k] for k in keep}}, token)
    return out


IdentityT = TypeVar("IdentityT", bound=ControllerIdentity)


async def ensure_identity(
    store: StateDir,
    load: Callable[[StateDir], IdentityT | None],
    register_with: Callable[[str], Awaitable[IdentityT]],
    token: str,
    now: dt.datetime,
    *,
    token_registers: bool = False,
) -> IdentityT:
    """The stored identity while its certificate is fresh; otherwise register_with the token given,
    or the one saved at the last registration. With token_registers, a token given registers again
    even while the stored certificate is fresh (a new enrolment)."""
    try:
        ident = load(store)
        saved = store.saved_token()
    except (OSError, ValueError, KeyError) as e:
        raise ControllerCallError(f"read {store.kind} state in {store.path}: {e}") from e
    if ident is not None and not (token_registers and token) and fresh(ident.cert, now):
        return ident
    if not (token or saved):
        raise ControllerCallError(f"no {store.kind} identity in {store.path} and no --token given")
    return await register_with(token or saved)
