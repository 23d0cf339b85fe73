"""Simulated vrouters: register with the bootstrap token and long-poll the desired state as
cvlan-vrouter does (POST /v1/vrouter/register, then POST /v1/vrouter/poll with its client
certificate, one request per connection, through cvlan.client.bootstrap like the real one), without
WireGuard or nftables. Each state received is checked (the vrouter is in it, every CVLAN it serves
has members) and counted; polls are timed like the nodes' ones."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvlan.client.bootstrap import ControllerCallError, StateDir, post_json, verifying_context
from cvlan.common import backoff
from cvlan.common.pki import new_csr
from cvlan.sim.metrics import Histogram, Interval
from cvlan.wire.keys import generate_keypair, public_of

LONG_POLL_S = 25
"""cvlan-vrouter's default (VrouterSettings.long_poll_s)."""
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0


class SimVrouter:
    """One vrouter's control loop; what it sees goes into the Interval that current() returns."""

    def __init__(
        self,
        name: str,
        server: str,
        token: str,
        ca_pem: str,
        state_dir: Path,
        current: Callable[[], Interval],
    ) -> None:
        self.name, self.server, self.token, self.ca_pem = name, server, token, ca_pem
        self.store = StateDir(state_dir, "vrouter")
        self.current = current
        self.version = ""
        self.members = 0
        self.cvlans = 0
        self._rng = random.Random(name)

    def _err(self, kind: str, detail: str) -> None:
        iv = self.current()
        iv.errors[kind] += 1
        iv.samples.setdefault(kind, f"{self.name}: {detail}"[:300])

    async def register(self) -> ssl.SSLContext:
        priv, _ = generate_keypair()
        key_pem, csr_pem = new_csr("cvlan-vrouter")
        body = {"token": self.token, "wg_public_key": public_of(priv), "csr_pem": csr_pem}
        out = await post_json(self.server + "/v1/vrouter/register", body, verifying_context(self.ca_pem))
        self.store.save(key_pem, out, {"name": out["name"], "region": out["region"]}, self.token)
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        ctx.load_cert_chain(self.store.cert_file, self.store.key_file)
        self.current().ok["vrouter_register"] += 1
        return ctx

    async def run(self, stop: asyncio.Event) -> None:
        """Register, then poll until stop is set; failures wait a jittered backoff, as the real one."""
        failures = 0
        ctx: ssl.SSLContext | None = None
        while not stop.is_set():
            try:
                if ctx is None:
                    ctx = await self.register()
                await self._poll(ctx)
                failures = 0
                continue
            except ControllerCallError as e:
                self._err(f"vrouter_http_{e.status}" if e.status else "vrouter_transport", str(e))
            except (OSError, ValueError, KeyError) as e:
                self._err(f"vrouter_{type(e).__name__}", str(e))
            wait = backoff.delay(failures, RETRY_BASE_S, RETRY_CAP_S, self._rng)
            failures += 1
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass

    async def _poll(self, ctx: ssl.SSLContext) -> None:
        t = time.monotonic()
        body = {"version": self.version, "long_poll_s": LONG_POLL_S}
        out = await post_json(self.server + "/v1/vrouter/poll", body, ctx, timeout=LONG_POLL_S + 15)
        iv = self.current()
        iv.hist.setdefault("vrouter_poll", Histogram()).record(time.monotonic() - t)
        iv.ok["vrouter_poll"] += 1
        if out.get("unchanged"):
            iv.ok["vrouter_unchanged"] += 1
            return
        self._check(out["state"])
        self.version = str(out["version"])
        iv.ok["vrouter_state"] += 1

    def _check(self, state: dict[str, Any]) -> None:
        if state["vrouter"]["name"] != self.name:
            raise ValueError(f"state for {state['vrouter']['name']}")
        self.cvlans = len(state["cvlans"])
        self.members = sum(len(c["members"]) for c in state["cvlans"])
