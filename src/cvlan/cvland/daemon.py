"""The cvland core: owns the engine, router and firewall; applies desired state by diff; reports status."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cvlan.common.clock import Clock
from cvlan.common.files import socket_in_use, write_atomic
from cvlan.common.host import resolve_hosts
from cvlan.cvland.dnsservice import DnsService
from cvlan.cvland.hubs import HubFailover
from cvlan.cvland.probe import ProbeBook
from cvlan.cvland.reconcile import Plan, plan, validate
from cvlan.cvland.relaypath import NoRelayPaths, PathSelector, RelayPath
from cvlan.cvland.subnets import RouteFailover, exit_peer
from cvlan.dataplane.engine import EngineError, WgEngine, pid_cmdline, stop_pid
from cvlan.dataplane.firewall import DENY_LOG_GROUP, DENY_LOG_PREFIX, Firewall
from cvlan.dataplane.forwarding import Forwarding
from cvlan.dataplane.nflog import Aggregator, NflogError, NflogReader
from cvlan.dataplane.policyroute import PolicyRouter
from cvlan.dataplane.router import Router
from cvlan.dataplane.uapi import SOCKET_DIR
from cvlan.dataplane.wgconfig import PeerState, WgConfig
from cvlan.wire.ipc import DeniedFlow, DeniedReport, DesiredState, DeviceStatus, PeerConfig, PeerStatus
from cvlan.wire.keys import KeyHex, short

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""What this run created (interface, engine PID), so the next start can clean up after a crash."""
DESIRED_FILE = "desired.json"
"""The last applied DesiredState (0600: it holds the private key), re-applied on start."""
DOWN_FILE = "down"
"""Present while the operator has taken the node down (`cvlancli down`); survives restarts."""
EXIT_FILE = "exit-node"
"""The name of the selected exit node (`cvlancli up --exit-node NAME`); absent: none."""


@dataclass
class Backends:
    engine: WgEngine
    router: Router
    firewall: Firewall
    local_addresses: list[str] | None = field(default=None)
    """Fixed local addresses for tests; None = read this namespace's interfaces."""
    local_networks: list[str] | None = field(default=None)
    """Fixed connected networks for tests; None = read them (none without real links)."""
    manage_links: bool = True
    """Delete the interface by name on start/stop (False with fakes: there is no real link)."""
    dns: DnsService | None = None
    """The node's resolver and the host's split DNS (None: cvland leaves DNS alone)."""
    policy: PolicyRouter | None = None
    """Exit-node policy routing (None: not managed, e.g. unit tests without a host)."""
    forwarding: Forwarding | None = None
    """IPv4 forwarding for subnet routes and exit node (None: not managed)."""


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
        self.routes = RouteFailover(clock)
        """Which peer carries each subnet route, and the exit node (cvland/subnets.py)."""
        self.desired: DesiredState | None = None
        self._wg_prev: WgConfig | None = None
        self._owns_host = False
        self._lock_fd: int | None = None
        self.nflog: NflogReader | None = None
        self.denied_flows = Aggregator()
        self.path_changes = 0
        """Times a peer was moved to another endpoint or path since start (a metric)."""
        self._paths: dict[KeyHex, str] = {}
        """Each peer's path at the last tick: its probe window restarts when the path changes."""
        self.probes = ProbeBook()
        """Health probes to the peers' overlay addresses (sent by the event loop, cvland/probe.py)."""

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Remove leftovers of a crashed run, start the engine, re-apply the last desired state."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock()
        self._stop_recorded_engine()
        sock = SOCKET_DIR / f"{self.ifname}.sock"
        if socket_in_use(sock):
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

    @property
    def exit_name(self) -> str:
        try:
            return (self.state_dir / EXIT_FILE).read_text().strip()
        except FileNotFoundError:
            return ""

    def select_exit(self, name: str) -> None:
        """Send all internet traffic through the exit node called name ("" = none); ValueError,
        and nothing changed, when no peer of that name is an approved exit node."""
        if name:
            _, why = exit_peer(self.desired, name) if self.desired else ("", "no map applied yet")
            if why:
                raise ValueError(f"exit node {name!r}: {why} (see `cvlancli status`)")
            write_atomic(self.state_dir / EXIT_FILE, name + "\n", 0o600)
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / EXIT_FILE).unlink()
        log.info("exit node selected" if name else "exit node cleared", extra={"peer": name or "none"})
        if not self.is_down and self.desired is not None and self.b.engine.alive():
            self._apply_plan(self._plan(self.desired))

    def up(self, exit_node: str | None = None) -> DeviceStatus:
        """Put the node back on the network with its last desired state, and select an exit node
        (None: keep the selection). Idempotent."""
        if exit_node is not None:
            self.select_exit(exit_node)
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
        self._teardown_forwarding()
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

    def _teardown_forwarding(self) -> None:
        """Exit-node rules and IPv4 forwarding back to the host's own (also after a crash)."""
        if self.b.policy is not None:
            with contextlib.suppress(Exception):
                self.b.policy.teardown()
        if self.b.forwarding is not None:
            with contextlib.suppress(Exception):
                self.b.forwarding.restore()

    def cleanup_leftovers(self) -> None:
        """Delete what a crashed run left in this namespace: the link, the nftables table, a
        resolv.conf pointing at its resolver, the exit-node rules and the forwarding switch."""
        if self.b.dns is not None:
            self.b.dns.cleanup()
        self._teardown_forwarding()
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
        self.routes.set_state(ds, self._connected())
        self._apply_plan(self._plan(ds))
        if self.b.dns is not None:
            self.b.dns.apply(ds, self.ifname)
        self.probes.set_targets(probe_targets(ds))
        return self._store_desired(ds)

    def _connected(self) -> list[str]:
        """The host's connected networks (a peer's subnet route never replaces one of them)."""
        if self.b.local_networks is not None:
            return self.b.local_networks
        if not self.b.manage_links:
            return []
        from cvlan.dataplane.router import connected_networks

        return connected_networks(exclude_ifnames=(self.ifname,))

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

    def _shaped(self, ds: DesiredState) -> DesiredState:
        """ds as the host gets it: CVLAN subnet on the active vrouter, each subnet route on its
        carrier, 0.0.0.0/0 on the selected exit node (if it is one)."""
        exit_key, _ = exit_peer(ds, self.exit_name)
        return self.routes.shape(self.hubs.shape(ds), exit_key)

    def _plan(self, ds: DesiredState) -> Plan:
        endpoint_of = lambda key: self.selector.choice(key).endpoint  # noqa: E731
        return plan(self._shaped(ds), self.ifname, endpoint_of, resolve_hosts)

    def _apply_plan(self, p: Plan) -> None:
        if p.exit is None and self.b.policy is not None:
            self.b.policy.apply(None)  # before the engine drops its fwmark: never a loop
        self.b.firewall.apply(p.ruleset)
        try:
            self.b.engine.configure(p.wg, self._wg_prev)
        except Exception:
            self._wg_prev = None  # unknown device state: next time replace everything
            raise
        self._wg_prev = p.wg
        self.b.router.apply(p.router)
        if self.b.forwarding is not None:
            self.b.forwarding.set(p.forward)
        if p.exit is not None and self.b.policy is not None:
            self.b.policy.apply(p.exit)

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
        self._restart_probes_on_new_paths(state.peers)
        if self.hubs.observe(state.peers):
            changed = True
            log.warning("vrouter failover", extra={"peer": short(self.hubs.active())})
        if self.routes.observe(state.peers):
            changed = True
            log.warning("subnet route moved to another peer", extra={"reason": "failover"})
        probes = self.hubs.take_probes() | self.routes.take_probes()
        if changed or probes:
            self._apply_plan(self._recreate(self._plan(self.desired), probes))

    def _restart_probes_on_new_paths(self, peers: Mapping[KeyHex, PeerState]) -> None:
        paths = {key: self._path_of(key, ps.last_handshake) for key, ps in peers.items()}
        for key, path in paths.items():
            if self._paths.get(key, "none") != path:
                self.probes.restart(key)
        self._paths = paths

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
        ds = self._shaped(self.desired) if self.desired else None  # standby peers: no routes
        state = self.b.engine.read() if self.b.engine.alive() else None
        peers: list[PeerStatus] = []
        now = self.clock.monotonic()
        for p in ds.peers if ds else []:
            key = KeyHex(p.public_key.lower())
            got = state.peers.get(key) if state else None
            probes = self.probes.stats(key, now)
            path = self._path_of(key, got.last_handshake if got else 0.0)
            if routed_via_vrouter(p):
                path = "vrouter" if probes.answered else "none"
            peers.append(
                PeerStatus(
                    public_key=key,
                    name=p.name,
                    allowed_ips=list(p.allowed_ips),
                    endpoint=got.endpoint if got else "",
                    last_handshake=got.last_handshake if got else 0.0,
                    rx_bytes=got.rx_bytes if got else 0,
                    tx_bytes=got.tx_bytes if got else 0,
                    path=path,
                    node_id=p.node_id,
                    relay_region=p.relay_region if path == "relay" else "",
                    via_vrouter=p.via_vrouter,
                    rtt_ms=None if probes.rtt_s is None else round(probes.rtt_s * 1000, 3),
                    probes_sent=probes.sent,
                    probes_answered=probes.answered,
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
            **self._route_status(ds),
            relays=list(ds.relays) if ds else [],
        )

    def _route_status(self, ds: DesiredState | None) -> dict[str, object]:
        """The exit node, the carrier of each subnet route and what this node forwards, for status."""
        if ds is None:
            return {}
        names = {p.public_key.lower(): p.name for p in ds.peers}
        name = self.exit_name
        _, why = exit_peer(ds, name)
        return {
            "exit_node": name,
            "exit_node_error": why,
            "routes": {r: names.get(k, "") for r, k in self.routes.table().items()},
            "forwarding": [*ds.routes, *(["0.0.0.0/0"] if ds.exit_node else [])],
        }

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


def routed_via_vrouter(p: PeerConfig) -> bool:
    """A CVLAN member reached through the vrouter: its address is not among its allowed IPs."""
    return bool(p.address) and not p.via_vrouter and not p.allowed_ips


def probe_targets(ds: DesiredState) -> dict[str, str]:
    """key -> overlay IP of every CVLAN member to probe (vrouters themselves are not probed)."""
    return {
        KeyHex(p.public_key.lower()): p.address.split("/")[0]
        for p in ds.peers
        if p.address and not p.via_vrouter
    }


def _delete_link(ifname: str) -> None:
    """Delete ifname in this network namespace if it exists (a leftover or our own TUN)."""
    if os.geteuid() != 0:
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr, contextlib.suppress(Exception):
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("del", index=idx[0])
