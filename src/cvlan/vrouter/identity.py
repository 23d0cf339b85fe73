"""The vrouter's identity: registered once with its bootstrap token, then kept in the state dir.

State dir (0700; every file 0600): wg.key (WireGuard private key, hex), vrouter.key / vrouter.crt
(TLS client key and certificate), ca.crt, vrouter.json (server URL, name, region, endpoint) and
token (the bootstrap token, kept so the vrouter can register again when its certificate nears
expiry; the controller accepts it until the vrouter is deleted). A restart needs no token.

Calls (through cvlan.client.bootstrap): GET /v1/vrouter/ca (checked against --ca-pin before
anything secret is sent), POST /v1/vrouter/register, POST /v1/vrouter/poll (mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cvlan.client import bootstrap
from cvlan.client.bootstrap import ControllerCallError, ControllerIdentity, StateDir
from cvlan.common.files import write_atomic
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.keys import KeyHex, generate_keypair, parse_key, public_of

log = logging.getLogger(__name__)

KIND = "vrouter"


@dataclass(frozen=True)
class Identity(ControllerIdentity):
    server: str
    name: str
    region: str
    endpoint: str
    wg_private_key: KeyHex
    cert_file: Path
    key_file: Path
    ca_pem: str

    def __repr__(self) -> str:  # never print the private key
        return f"Identity(name={self.name!r}, region={self.region!r})"

    @property
    def wg_public_key(self) -> KeyHex:
        return public_of(self.wg_private_key)


def load_identity(d: Path) -> Identity | None:
    return _load(StateDir(d, KIND))


def _load(store: StateDir) -> Identity | None:
    info = store.meta()
    if info is None:
        return None
    return Identity(
        info["server"],
        info["name"],
        info["region"],
        info["endpoint"],
        parse_key((store.path / "wg.key").read_text(), "wg.key"),
        store.cert_file,
        store.key_file,
        store.ca_pem(),
    )


def _wg_key(d: Path) -> KeyHex:
    """The WireGuard key of this vrouter: kept across re-registrations, created on first start."""
    p = d / "wg.key"
    if p.exists():
        return parse_key(p.read_text(), "wg.key")
    priv, _ = generate_keypair()
    write_atomic(p, priv, 0o600)
    return priv


async def register(settings: VrouterSettings, server: str, token: str) -> Identity:
    """Send the WireGuard public key and a CSR with the bootstrap token; store the answer (0600)."""
    store = StateDir(settings.state_dir, KIND)
    store.create()
    wg = _wg_key(store.path)
    fields = {"wg_public_key": public_of(wg)}
    out = await bootstrap.register(store, server, settings.ca_pin, token, fields, {"server": server}, _KEEP)
    log.info("vrouter registered", extra={"relay_region": out["region"]})
    ident = _load(store)
    assert ident is not None
    return ident


async def ensure_identity(settings: VrouterSettings, now: dt.datetime | None = None) -> Identity:
    """The stored identity while its certificate is fresh and no token is given; otherwise register
    (again) with the token given, or the one saved at the first registration."""
    store = StateDir(settings.state_dir, KIND)
    try:
        stored = store.meta() or {}
    except (OSError, ValueError) as e:
        raise ControllerCallError(f"read vrouter state in {store.path}: {e}") from e
    server: str = settings.server or stored.get("server", "")
    if not server:
        raise ControllerCallError(f"no vrouter identity in {store.path}: give --server and --token")

    async def register_with(token: str) -> Identity:
        return await register(settings, server, token)

    now = now or dt.datetime.now(dt.UTC)
    return await bootstrap.ensure_identity(
        store, _load, register_with, settings.token, now, token_registers=True
    )


async def renew(settings: VrouterSettings, ident: Identity) -> Identity:
    """Register again with the saved bootstrap token (same WireGuard key, new TLS key and certificate)."""
    try:
        token = StateDir(settings.state_dir, KIND).saved_token()
    except OSError as e:
        raise ControllerCallError(f"renew the vrouter certificate: no saved token: {e}") from e
    if not token:
        raise ControllerCallError("renew the vrouter certificate: no saved token")
    return await register(settings, ident.server, token)


_KEEP = ("name", "region", "endpoint")
