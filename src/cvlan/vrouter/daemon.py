"""The vrouter loop: poll the desired state, reconcile the hub interface by diff, repeat.

Apply order on every change: firewall table first (a new CVLAN's forwarding is allowed only once
its rule exists), then WireGuard peers (diff against what was last applied), addresses and routes,
and IP forwarding last. A step that fails leaves the previous state of that step in place and is
retried at the next poll; the loop itself never exits on a controller or host error.

Between polls, a tick every TICK_S reads the other vrouters' WireGuard counters: when one turns
dead or alive (dataplane/hubchoice.py), the members' /32s move to their next alive hub at once,
without waiting for the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cvlan.client.bootstrap import ControllerCallError, post_json
from cvlan.common.clock import Clock, SystemClock
from cvlan.common.files import write_atomic
from cvlan.common.pki import fresh
from cvlan.dataplane.engine import WgEngine, make_engine, pick_engine, pid_cmdline, stop_pid
from cvlan.dataplane.firewall import Firewall, FirewallError, NftFirewall
from cvlan.dataplane.hubchoice import HubLiveness
from cvlan.dataplane.router import NetlinkRouter, Router, RouterConfig, RouterError
from cvlan.dataplane.uapi import UapiError
from cvlan.dataplane.wgconfig import WgConfig
from cvlan.vrouter import reconcile
from cvlan.vrouter.identity import Identity, renew
from cvlan.vrouter.settings import VrouterSettings
from cvlan.wire.endpoint import split_hostport
from cvlan.wire.keys import KeyHex, parse_key, public_of, short

log = logging.getLogger(__name__)
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
MTU = 1420
TICK_S = 1.0
"""How often the other vrouters' counters are read for failover."""


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
        clock: Clock | None = None,
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
        self.liveness = HubLiveness(clock or SystemClock(), own=public_of(ident.wg_private_key))
        self._lock = threading.Lock()
        """apply (after a poll) and tick (failover) run in worker threads; one at a time."""

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
        await asyncio.to_thread(self.apply, out["state"], out["version"])
        return True

    def apply(self, state: dict[str, Any], version: str = "") -> None:
        """Reconcile the host with state (raises on a failed step; the version is then not taken)."""
        with self._lock:
            self.liveness.watch(parse_key(v["key"], "vrouter key") for v in state["vrouters"])
            cfg = self._build(state)
            self.firewall.apply(cfg.ruleset)
            self._configure(cfg.wg)
            self.router.apply(RouterConfig(self.ifname, reconcile.HUB_ADDRESS, MTU, cfg.routes))
            if self.ip_forward.read_text().strip() != "1":
                self.ip_forward.write_text("1\n")
            self.applied = cfg
            self.state = state
            self.version = version
        log.info(
            "hub state applied",
            extra={"seq": self.version[:8], "reason": f"{cfg.cvlans} CVLANs, {len(cfg.wg.peers)} peers"},
        )
        self.write_status()

    def _build(self, state: dict[str, Any]) -> reconcile.HubConfig:
        return reconcile.build(
            state, self.ident.wg_private_key, self.ifname, self.listen_port, active=self.liveness.active
        )

    def _configure(self, wg: WgConfig, recreate: set[str] | None = None) -> None:
        """Write the WireGuard config by diff; peers in recreate are removed first, so that adding
        them again starts a handshake at once (the liveness probe)."""
        try:
            if recreate and self._wg_prev is not None:
                kept = tuple(p for p in self._wg_prev.peers if p.public_key not in recreate)
                without = replace(self._wg_prev, peers=kept)
                self.engine.configure(without, self._wg_prev)
                self._wg_prev = without
            if wg != self._wg_prev:
                self.engine.configure(wg, self._wg_prev)
                self._wg_prev = wg
        except (UapiError, OSError):
            self._wg_prev = None  # unknown device state: next time start from a full config
            raise

    def tick(self) -> bool:
        """Feed the other vrouters' counters to the liveness tracker; when one turned dead or alive,
        or needs a probe, rewrite the WireGuard peers. Returns whether anything was written."""
        with self._lock:
            if self.state is None or self.applied is None:
                return False
            peers = self.engine.read().peers
            changed: list[KeyHex] = []
            for key in self.applied.vrouter_keys:
                p = peers.get(key)
                if p is not None and self.liveness.observe(key, p.rx_bytes, p.last_handshake):
                    changed.append(key)
            for key in changed:
                alive = "alive" if self.liveness.alive(key) else "dead"
                log.warning("vrouter peer %s", alive, extra={"peer": short(key)})
            moved = self.liveness.refresh()
            probes = self.liveness.take_probes()
            if not moved and not probes:
                return False
            cfg = self._build(self.state)
            self._configure(cfg.wg, probes)
            self.applied = cfg
        self.write_status()
        return True

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
            "dead_vrouters": sorted(
                names.get(k, k)
                for k in (self.applied.vrouter_keys if self.applied else ())
                if not self.liveness.alive(k)
            ),
            "updated": time.time(),
        }

    def write_status(self) -> None:
        try:
            write_atomic(self.settings.state_dir / "status.json", json.dumps(self.status(), indent=1), 0o644)
        except (OSError, UapiError) as e:
            log.warning("status not written", extra={"reason": str(e)})

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until stop is set (and tick meanwhile). Failures back off with jitter (1 s
        doubling to 30 s)."""
        ticker = asyncio.ensure_future(self._tick_loop(stop))
        try:
            await self._poll_loop(stop)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except (UapiError, OSError, ValueError, KeyError) as e:
                self.errors += 1
                log.error("failover tick failed", extra={"reason": f"{type(e).__name__}: {e}"})
            await _sleep(stop, TICK_S)

    async def _poll_loop(self, stop: asyncio.Event) -> None:
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
