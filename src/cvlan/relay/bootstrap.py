"""The relay's identity: registered with the controller once, then kept in the state dir
(cvlan.client.bootstrap.StateDir: relay.key, relay.crt, ca.crt, relay.json and the bootstrap token,
all 0600), so a restart or a certificate renewal needs no token.

The relay talks to the controller through cvlan.client.bootstrap. Calls:
GET /v1/relay/ca (checked against --ca-pin before anything secret is sent) and POST
/v1/relay/register; revocation checks (POST /v1/relay/check) are in cvlan.relay.revocation.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cvlan.client.bootstrap import (
    ControllerCallError,
    StateDir,
    fetch_pinned_ca,
    post_json,
    verifying_context,
)
from cvlan.common.pki import fresh, new_csr
from cvlan.relay.settings import RelaySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayIdentity:
    name: str
    region: str
    url: str
    stun: str
    cert_file: Path
    key_file: Path
    ca_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())


def load_identity(state_dir: Path) -> RelayIdentity | None:
    store = StateDir(state_dir, "relay")
    info = store.meta()
    if info is None:
        return None
    return RelayIdentity(
        info["name"],
        info["region"],
        info["url"],
        info["stun"],
        store.cert_file,
        store.key_file,
        store.ca_pem(),
    )


def controller_ssl(ca_pem: str | None, identity: RelayIdentity | None = None) -> ssl.SSLContext:
    ctx = verifying_context(ca_pem)
    if identity is not None:
        ctx.load_cert_chain(identity.cert_file, identity.key_file)
    return ctx


async def register(settings: RelaySettings, now: dt.datetime) -> RelayIdentity:
    """Send a CSR with the bootstrap token (given, or kept from the last registration); store the
    answer (StateDir, all 0600)."""
    store = StateDir(settings.state_dir, "relay")
    token = settings.token or store.saved_token()
    if not token:
        raise ControllerCallError(f"no current relay identity in {settings.state_dir} and no --token given")
    ca_pem = (
        await fetch_pinned_ca(settings.server + "/v1/relay/ca", settings.ca_pin) if settings.ca_pin else None
    )
    key_pem, csr_pem = new_csr("cvlan-relay")
    body = {"token": token, "csr_pem": csr_pem}
    out = await post_json(settings.server + "/v1/relay/register", body, controller_ssl(ca_pem))
    store.save(key_pem, out, {k: out[k] for k in ("name", "region", "url", "stun")}, token)
    log.info("relay registered", extra={"relay_region": out["region"]})
    ident = load_identity(settings.state_dir)
    assert ident is not None
    return ident


async def ensure_identity(settings: RelaySettings, now: dt.datetime | None = None) -> RelayIdentity:
    """The stored identity while its certificate is fresh; otherwise register again with the token."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        ident = load_identity(settings.state_dir)
    except (OSError, ValueError, KeyError) as e:
        raise ControllerCallError(f"read relay state in {settings.state_dir}: {e}") from e
    if ident is not None and fresh(ident.cert, now):
        return ident
    return await register(settings, now)
