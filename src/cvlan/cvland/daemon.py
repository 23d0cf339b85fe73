"""The cvland core: owns the engine, router and firewall; applies desired state by diff; reports status."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from cvlan.common.clock import Clock
from cvlan.common.files import write_atomic
from cvlan.cvland.dnsservice import DnsService
from cvlan.cvland.hubs import HubFailover
from cvlan.cvland.reconcile import Plan, plan, validate
from cvlan.cvland.relaypath import NoRelayPaths, PathSelector, RelayPath
from cvlan.dataplane.engine import EngineError, WgEngine, pid_cmdline, stop_pid
from cvlan.dataplane.firewall import DENY_LOG_GROUP, DENY_LOG_PREFIX, Firewall
from cvlan.dataplane.nflog import Aggregator, NflogError, NflogReader
from cvlan.dataplane.router import Router
from cvlan.dataplane.uapi import SOCKET_DIR
from cvlan.dataplane.wgconfig import WgConfig
from cvlan.wire.ipc import DeniedFlow, DeniedReport, DesiredState, DeviceStatus, PeerStatus
from cvlan.wire.keys import KeyHex, short

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""What this run created (interface, engine PID), so the next start can clean up after a crash."""
DESIRED_FILE = "desired.json"
"""The last applied DesiredState (0600: it holds the private key), re-applied on start."""
DOWN_FILE = "down"
"""Present while the operator has taken the node down (`cvlancli down`); survives restarts."""


@dataclass
class Backends:
    engine: WgEngine
    router: Router
    firewall: Firewall
    local_addresses: list[str] | None = field(default=None)
    """Fixed local addresses for tests; None = read this namespace's interfaces."""
    manage_links: bool = True
    """Delete the interface by name on start/stop (False with fakes: there is no real link)."""
    dns: DnsService | None = None
    """The node's resolver and the host's split DNS (None: cvland leaves DNS alone)."""


class Daemon:
    """Holds the applied state and turns DesiredState into engine/router/firewall changes."""

    def __init__(
        self,
        ifname: str,
        state_dir: Path,
        backends: Backends,
        clock: Clock,
        probe_s: float,
        relay: RelayPath | None = None,
        direct_retry_s: float = 15.0,
    ) -> None:
        self.ifname = ifname
        self.state_dir = state_dir
        self.b = backends
        self.clock = clock
        self.relay = relay
        paths = relay if relay is not None else NoRelayPaths()
        self.selector = PathSelector(clock, paths, probe_s=probe_s, retry_s=direct_retry_s)
        self.hubs = HubFailover(clock)
        """Which vrouter peer carries the CVLAN subnet when there are several (cvland/hubs.py)."""
        self.desired: DesiredState | None = None
        self._wg_prev: WgConfig | None = None
        self._owns_host = False
        self._lock_fd: int | None = None
        self.nflog: NflogReader | None = None
        self.denied_flows = Aggregator()
        self.path_changes = 0
        """Times a peer was moved to another endpoint or path since start (a metric)."""

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Remove leftovers of a crashed run, start the engine, re-apply the last desired state."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock()
        self._stop_recorded_engine()
        sock = SOCKET_DIR / f"{self.ifname}.sock"
        if _uapi_in_use(sock):
            raise EngineError(
                f"interface {self.ifname}: another WireGuard process serves {sock} "
                "(the UAPI directory is shared by all network namespaces; choose another --interface)"
            )
        self._owns_host = True
        self.cleanup_leftovers()
        self._open_nflog()
        saved = self._load_desired()
        if self.is_down:
            self.desired = saved
            log.info("node is down (cvlancli down); not starting the interface until `cvlancli up`")
            return
        self._bring_up(saved)

    @property
    def is_down(self) -> bool:
        return (self.state_dir / DOWN_FILE).exists()

    def _bring_up(self, saved: DesiredState | None) -> None:
        """Start the engine and apply saved (the last desired state) if there is one."""
        self.b.engine.start()
        self._write_run_file()
        if saved is not None:
            try:
                self.apply(saved)
                log.info("re-applied saved desired state", extra={"seq": saved.version})
            except Exception as e:  # a bad saved file must not keep the daemon down
                log.warning("saved desired state not applied: %s", e)

    def down(self) -> DeviceStatus:
        """Take the node off the network and remember that: interface, routes and nftables go,
        the desired state (identity, address) stays. Idempotent."""
        write_atomic(self.state_dir / DOWN_FILE, "taken down with cvlancli down\n", 0o600)
        self._teardown_host()
        log.info("node taken down", extra={"reason": "cvlancli down"})
        return self.status()

    def up(self) -> DeviceStatus:
        """Put the node back on the network with its last desired state. Idempotent."""
        if self.is_down:
            (self.state_dir / DOWN_FILE).unlink()
            self._teardown_host()  # nothing should be left, but never start over a leftover
            self._bring_up(self.desired)
            log.info("node brought up", extra={"reason": "cvlancli up"})
        return self.status()

    def _open_nflog(self) -> None:
        try:
            self.nflog = NflogReader(DENY_LOG_GROUP, DENY_LOG_PREFIX.strip())
        except (NflogError, OSError) as e:
            log.warning("denied-flow logging disabled: %s", e)
            self.nflog = None

    def denied(self) -> DeniedReport:
        """Flows dropped by the filter since the last call (then forgotten)."""
        if self.nflog is None:
            return DeniedReport(enabled=False)
        self.nflog.read_ready(self.denied_flows)
        overflow = self.denied_flows.overflow
        flows = [
            DeniedFlow(src=f.src, dst=f.dst, proto=f.proto, dport=f.dport, packets=n)
            for f, n in self.denied_flows.drain()
        ]
        return DeniedReport(flows=flows, overflow=overflow)

    def _lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineError(f"state dir {self.state_dir}: in use by another running cvland") from None
        self._lock_fd = fd

    def stop(self) -> None:
        """Tear everything down: firewall table, routes and address (with the link), engine."""
        if self.nflog is not None:
            self.nflog.close()
            self.nflog = None
        if self._owns_host:
            self._teardown_host()
            self._owns_host = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _teardown_host(self) -> None:
        """Point the host's DNS back, then remove the firewall table, routes, engine and link of this run."""
        if self.b.dns is not None:
            self.b.dns.teardown()
        with contextlib.suppress(Exception):
            self.b.firewall.teardown()
        self.b.router.teardown()
        self.b.engine.stop()
        self._delete_link()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / RUN_FILE).unlink()
        self._wg_prev = None

    def _stop_recorded_engine(self) -> None:
        try:
            info = json.loads((self.state_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return
        pid = info.get("pid")
        if isinstance(pid, int) and pid > 0:
            argv = pid_cmdline(pid)
            if argv and info.get("interface") in argv:
                log.warning("stopping engine left by a previous run", extra={"reason": f"pid {pid}"})
                stop_pid(pid)

    def cleanup_leftovers(self) -> None:
        """Delete what a crashed run left in this namespace: the link, the nftables table and a
        resolv.conf pointing at its resolver."""
        if self.b.dns is not None:
            self.b.dns.cleanup()
        self._delete_link()
        with contextlib.suppress(Exception):
            self.b.firewall.teardown()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / RUN_FILE).unlink()

    def _write_run_file(self) -> None:
        info = {"interface": self.ifname, "engine": self.b.engine.name, "pid": self.b.engine.pid()}
        write_atomic(self.state_dir / RUN_FILE, json.dumps(info), 0o600)

    def _load_desired(self) -> DesiredState | None:
        try:
            return DesiredState.model_validate_json((self.state_dir / DESIRED_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            log.warning("ignoring unreadable %s: %s", DESIRED_FILE, str(e).splitlines()[0])
            return None

    def _delete_link(self) -> None:
        if self.b.manage_links:
            _delete_link(self.ifname)

    # --- apply -----------------------------------------------------------------------------------

    def apply(self, ds: DesiredState) -> int:
        """Make the host match ds; only what changed is touched. Returns the applied version."""
        validate(ds)  # nothing changes for invalid input
        if self.is_down:
            return self._store_desired(ds)
        if self.relay is not None:
            self.relay.configure(ds)
        self._note_roaming()
        self.selector.set_peers(
            {p.public_key.lower(): (tuple(p.endpoints), p.relay_region) for p in ds.peers}
        )
        self.hubs.set_state(ds)
        self._apply_plan(self._plan(ds))
        if self.b.dns is not None:
            self.b.dns.apply(ds, self.ifname)
        return self._store_desired(ds)

    def _store_desired(self, ds: DesiredState) -> int:
        if self.desired is None or self.desired != ds:
            write_atomic(self.state_dir / DESIRED_FILE, ds.model_dump_json(), 0o600)
        self.desired = ds
        return ds.version

    def _note_roaming(self) -> None:
        """Let the selector see where WireGuard roamed peers since the last tick, before new
        candidates can replace the endpoint in use (a tick comes only every tick_s)."""
        if self.desired is None or not self.b.engine.alive():
            return
        try:
            peers = self.b.engine.read().peers
        except Exception:  # best effort: configuring the engine reports a broken one
            return
        for key, ps in peers.items():
            self.selector.note_roaming(key, ps.last_handshake, ps.endpoint)

    def _plan(self, ds: DesiredState) -> Plan:
        return plan(self.hubs.shape(ds), self.ifname, lambda key: self.selector.choice(key).endpoint)

    def _apply_plan(self, p: Plan) -> None:
        self.b.firewall.apply(p.ruleset)
        try:
            self.b.engine.configure(p.wg, self._wg_prev)
        except Exception:
            self._wg_prev = None  # unknown device state: next time replace everything
            raise
        self._wg_prev = p.wg
        self.b.router.apply(p.router)

    def tick(self) -> None:
        """Periodic work: restart a dead engine, rotate endpoints of peers without a handshake."""
        if self.is_down:
            return
        if not self.b.engine.alive():
            log.error("engine exited; restarting it", extra={"reason": self.b.engine.name})
            self._wg_prev = None
            self.b.engine.stop()
            self._delete_link()
            self.b.engine.start()
            self._write_run_file()
            if self.desired is not None:
                self.b.router.teardown()
                self._apply_plan(self._plan(self.desired))
                if self.b.dns is not None:  # the new link has none of the old one's DNS settings
                    self.b.dns.apply(self.desired, self.ifname, force=True)
            return
        if self.nflog is not None:
            self.nflog.read_ready(self.denied_flows)
        if self.desired is None:
            return
        state = self.b.engine.read()
        changed = False
        for key, ps in state.peers.items():
            if self.selector.observe(key, ps.last_handshake, ps.endpoint):
                changed = True
                self.path_changes += 1
                log.info(
                    "trying next endpoint",
                    extra={"peer": short(key), "endpoint": self.selector.choice(key).endpoint},
                )
        if self.hubs.observe(state.peers):
            changed = True
            log.warning("vrouter failover", extra={"peer": short(self.hubs.active())})
        probes = self.hubs.take_probes()
        if changed or probes:
            self._apply_plan(self._recreate(self._plan(self.desired), probes))

    def _recreate(self, p: Plan, probes: set[str] | None = None) -> Plan:
        """Remove peers whose path switched (or vrouter peers to probe), so that re-adding them
        starts a handshake at once."""
        keys = self.selector.take_recreate() | (probes or set())
        if keys and self._wg_prev is not None:
            kept = tuple(x for x in self._wg_prev.peers if x.public_key not in keys)
            without = replace(self._wg_prev, peers=kept)
            self.b.engine.configure(without, self._wg_prev)
            self._wg_prev = without
        return p

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> DeviceStatus:
        ds = self.hubs.shape(self.desired) if self.desired else None  # standby vrouters: no routes
        state = self.b.engine.read() if self.b.engine.alive() else None
        peers: list[PeerStatus] = []
        for p in ds.peers if ds else []:
            key = KeyHex(p.public_key.lower())
            got = state.peers.get(key) if state else None
            peers.append(
                PeerStatus(
                    public_key=key,
                    name=p.name,
                    allowed_ips=list(p.allowed_ips),
                    endpoint=got.endpoint if got else "",
                    last_handshake=got.last_handshake if got else 0.0,
                    rx_bytes=got.rx_bytes if got else 0,
                    tx_bytes=got.tx_bytes if got else 0,
                    path=self._path_of(key, got.last_handshake if got else 0.0),
                )
            )
        port = state.listen_port if state else 0
        return DeviceStatus(
            interface=self.ifname,
            engine=self.b.engine.name,
            applied_version=ds.version if ds else 0,
            node_id=ds.node_id if ds else 0,
            address=ds.address if ds else "",
            down=self.is_down,
            listen_port=port,
            # Until the first desired state sets the listen port, the engine listens on a random
            # port of its own: endpoints with that port would be out of date at once, and a peer
            # that tried them could leave a working path for them.
            local_endpoints=self.local_endpoints(port if ds else 0),
            mapped_endpoint=self.relay.mapped_endpoint if self.relay else "",
            home_relay_region=self.relay.home_region if self.relay else "",
            peers=peers,
            dns=self.b.dns.status() if self.b.dns is not None and not self.is_down else None,
        )

    def _path_of(self, key: str, last_handshake: float) -> str:
        if last_handshake <= 0 or self.clock.now().timestamp() - last_handshake > 180:
            return "none"
        path = self.selector.choice(key).path
        return path if path != "none" else "direct"

    def local_endpoints(self, port: int) -> list[str]:
        if port <= 0:
            return []
        addrs = self.b.local_addresses
        if addrs is None:
            from cvlan.dataplane.router import local_addresses

            addrs = local_addresses(exclude_ifnames=(self.ifname,))
        subnet = ipaddress.ip_network(self.desired.cvlan_subnet, strict=False) if self.desired else None
        out = []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if subnet is not None and ip in subnet:
                continue
            out.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
        return out


def _uapi_in_use(sock: Path) -> bool:
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def _delete_link(ifname: str) -> None:
    """Delete ifname in this network namespace if it exists (a leftover or our own TUN)."""
    if os.geteuid() != 0:
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr, contextlib.suppress(Exception):
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("del", index=idx[0])
