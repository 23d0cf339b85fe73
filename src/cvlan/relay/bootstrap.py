"""The relay's identity: registered with the controller once, then kept in the state dir
(cvlan.client.bootstrap.StateDir: relay.key, relay.crt, ca.crt, relay.json and the bootstrap token,
all 0600), so a restart or a certificate renewal needs no token.

The relay talks to the controller through cvlan.client.bootstrap, which holds the registration
flow it shares with the vrouter. Calls: GET /v1/relay/ca (checked against --ca-pin before anything
secret is sent) and POST /v1/relay/register; revocation checks (POST /v1/relay/check) are in
cvlan.relay.revocation.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cvlan.client import bootstrap
from cvlan.client.bootstrap import ControllerIdentity, StateDir
from cvlan.relay.settings import RelaySettings

log = logging.getLogger(__name__)

KIND = "relay"


@dataclass(frozen=True)
class RelayIdentity(ControllerIdentity):
    name: str
    region: str
    url: str
    stun: str
    cert_file: Path
    key_file: Path
    ca_pem: str


def load_identity(state_dir: Path) -> RelayIdentity | None:
    return _load(StateDir(state_dir, KIND))


def _load(store: StateDir) -> RelayIdentity | None:
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


async def ensure_identity(settings: RelaySettings, now: dt.datetime | None = None) -> RelayIdentity:
    """The stored identity while its certificate is fresh; otherwise register again with the token
    (given, or kept from the last registration)."""
    store = StateDir(settings.state_dir, KIND)

    async def register(token: str) -> RelayIdentity:
        out = await bootstrap.register(store, settings.server, settings.ca_pin, token, {}, {}, _KEEP)
        log.info("relay registered", extra={"relay_region": out["region"]})
        ident = _load(store)
        assert ident is not None
        return ident

    return await bootstrap.ensure_identity(
        store, _load, register, settings.token, now or dt.datetime.now(dt.UTC)
    )


_KEEP = ("name", "region", "url", "stun")
