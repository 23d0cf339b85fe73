"""The vrouter loop: poll the desired state, reconcile the hub interface by diff, repeat.

Apply order on every change: firewall table first (a new CVLAN's forwarding is allowed only once
its rule exists), then WireGuard peers (diff against what was last applied), addresses and routes,
and IP forwarding last. A step that fails leaves the previous state of that step in place and is
retried at the next poll; the loop itself never exits on a controller or host error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from cvlan.client.bootstrap import ControllerCallError, post_json
from cvlan.common.files import write_atomic
from cvlan.common.pki import fresh
from cvlan.dataplane.engine import WgEngine, make_engine, pick_engine, pid_cmdline, stop_pid
from cvlan.dataplane.firewall import Firewall, FirewallError, NftFirewall
from cvlan.dataplane.router import NetlinkRouter, Router, RouterConfig, RouterError
from cvlan.dataplane.uapi import UapiError
from cvlan.dataplane.wgconfig import WgConfig
from cvlan.vrouter import reconcile
from cvlan.vrouter.identity import Identity, renew
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.endpoint import split_hostport

log = logging.getLogger(__name__)
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
MTU = 1420


class Vrouter:
    """One hub interface driven from the controller's desired state."""

    def __init__(
        self,
        settings: VrouterSettings,
        ident: Identity,
        engine: WgEngine | None = None,
        router: Router | None = None,
        firewall: Firewall | None = None,
        ip_forward: Path = IP_FORWARD,
    ) -> None:
        self.settings = settings
        self.ident = ident
        self.ifname = settings.interface
        self.engine = engine or make_engine(
            pick_engine(settings.engine), self.ifname, settings.state_dir / "engine.log"
        )
        self.router = router or NetlinkRouter()
        self.firewall = firewall or NftFirewall(self.ifname)
        self.ip_forward = ip_forward
        """The forwarding switch of this network namespace (a file in tests)."""
        self.version = ""
        self.state: dict[str, Any] | None = None
        self.applied: reconcile.HubConfig | None = None
        self._wg_prev: WgConfig | None = None
        self.errors = 0

    @property
    def listen_port(self) -> int:
        return self.settings.listen_port or split_hostport(self.ident.endpoint)[1]

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the WireGuard engine (after removing one a crashed run of ours left behind)."""
        pidfile = self.settings.state_dir / "engine.pid"
        with contextlib.suppress(OSError, ValueError):
            old = int(pidfile.read_text())
            if self.ifname in pid_cmdline(old):
                log.info("stopping the engine a previous run left behind")
                stop_pid(old)
        self.engine.start()
        pid = self.engine.pid()
        if pid is not None:
            write_atomic(pidfile, str(pid), 0o600)

    def stop(self) -> None:
        """Tear down: firewall table, interface (engine) and forwarding as we found it is not restored
        (other services of the host may rely on it)."""
        with contextlib.suppress(Exception):
            self.firewall.teardown()
        self.engine.stop()
        self.router.teardown()
        with contextlib.suppress(OSError):
            (self.settings.state_dir / "engine.pid").unlink()

    # --- control loop ----------------------------------------------------------------------------

    async def poll_once(self) -> bool:
        """One poll; applies a new state if there is one. Returns whether the state changed."""
        if not fresh(self.ident.cert, dt.datetime.now(dt.UTC)):
            self.ident = await renew(self.settings, self.ident)
        body = {"version": self.version, "long_poll_s": self.settings.long_poll_s}
        out = await post_json(
            self.ident.server + "/v1/vrouter/poll",
            body,
            self.ident.ssl_context(),
            timeout=self.settings.long_poll_s + 15,
        )
        if out.get("unchanged"):
            return False
        self.state = out["state"]
        await asyncio.to_thread(self.apply, out["state"], out["version"])
        return True

    def apply(self, state: dict[str, Any], version: str = "") -> None:
        """Reconcile the host with state (raises on a failed step; the version is then not taken)."""
        cfg = reconcile.build(state, self.ident.wg_private_key, self.ifname, self.listen_port)
        self.firewall.apply(cfg.ruleset)
        if cfg.wg != self._wg_prev:
            try:
                self.engine.configure(cfg.wg, self._wg_prev)
            except (UapiError, OSError):
                self._wg_prev = None  # unknown device state: next time start from a full config
                raise
            self._wg_prev = cfg.wg
        self.router.apply(RouterConfig(self.ifname, reconcile.HUB_ADDRESS, MTU, cfg.routes))
        if self.ip_forward.read_text().strip() != "1":
            self.ip_forward.write_text("1\n")
        self.applied = cfg
        self.version = version
        log.info(
            "hub state applied",
            extra={"seq": self.version[:8], "reason": f"{cfg.cvlans} CVLANs, {len(cfg.wg.peers)} peers"},
        )
        self.write_status()

    def status(self) -> dict[str, Any]:
        """What the hub looks like now: peers with counters, and the firewall's drops."""
        st = self.engine.read()
        names: dict[str, str] = {}
        for c in (self.state or {}).get("cvlans", []):
            for m in c["members"]:
                names[m["key"]] = m["name"]
        for v in (self.state or {}).get("vrouters", []):
            names[v["key"]] = "vrouter:" + v["name"]
        peers = [
            {
                "name": names.get(k, ""),
                "key": k,
                "endpoint": p.endpoint,
                "last_handshake": p.last_handshake,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
                "allowed_ips": p.allowed_ips,
            }
            for k, p in sorted(st.peers.items())
        ]
        return {
            "name": self.ident.name,
            "region": self.ident.region,
            "interface": self.ifname,
            "listen_port": st.listen_port,
            "version": self.version,
            "cvlans": self.applied.cvlans if self.applied else 0,
            "served": self.applied.served if self.applied else 0,
            "peers": peers,
            "denied_packets": self.firewall.denied(),
            "errors": self.errors,
            "updated": time.time(),
        }

    def write_status(self) -> None:
        try:
            write_atomic(self.settings.state_dir / "status.json", json.dumps(self.status(), indent=1), 0o644)
        except (OSError, UapiError) as e:
            log.warning("status not written", extra={"reason": str(e)})

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until stop is set. Failures back off with jitter (1 s doubling to 30 s)."""
        delay = 1.0
        while not stop.is_set():
            poll = asyncio.ensure_future(self.poll_once())
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait([poll, halt], return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll
                halt.cancel()
                return
            halt.cancel()
            try:
                poll.result()
                delay = 1.0
                if self.settings.long_poll_s == 0:
                    await _sleep(stop, 5.0)
                continue
            except ControllerCallError as e:
                self.errors += 1
                log.warning("poll failed", extra={"reason": str(e)})
                if not e.retryable and "no longer current" in str(e):
                    log.error("the controller no longer accepts this vrouter (deleted?)")
            except (FirewallError, RouterError, UapiError, OSError, ValueError, KeyError) as e:
                self.errors += 1
                log.error("hub state not applied", extra={"reason": f"{type(e).__name__}: {e}"})
            self.write_status()
            await _sleep(stop, delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
