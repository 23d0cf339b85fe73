"""cvlan-ctrl's main loop: discover -> register (once) -> poll forever, renewing the certificate at
2/3 of its lifetime and handing every new map to cvland over the IPC socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from cvlan.agent.metrics import AgentMetrics
from cvlan.agent.netmap import desired_state
from cvlan.agent.state import Identity, StateStore
from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from cvlan.client.ipc import IpcClient, IpcError
from cvlan.common.backoff import Backoff
from cvlan.common.host import resolve_hosts
from cvlan.wire.ipc import DesiredState, DeviceStatus
from cvlan.wire.nodeproto import MAX_DENIED_FLOWS
from cvlan.wire.pb import node_pb2 as pb
from cvlan.wire.peerhealth import REPORT_INTERVAL_S, HealthSent, health_signature, worst_first

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3
STATUS_TIMEOUT_S = 3.0


class FatalError(Exception):
    """Stop cvlan-ctrl with this one line on stderr and the given exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Options:
    server: str | None
    token: str | None
    ca_pin: str | None
    state_dir: Path
    cvland_socket: Path
    hostname: str = ""
    listen_port: int = 51820
    long_poll_s: int = 30
    """0 disables long-poll: the agent then polls every poll interval."""
    enrol_timeout_s: float = 60.0
    backoff_cap_s: float = 30.0
    report_interval_s: float = REPORT_INTERVAL_S
    """How often denied flows and peer health are collected from cvland and reported to the controller."""
    advertise_routes: tuple[str, ...] = ()
    """Subnet routes behind this node (normalized by wire.routes.parse_routes), sent with every poll."""
    advertise_exit_node: bool = False
    """Offer this node as an exit node."""

    def route_advert(self) -> pb.RouteAdvert:
        """What every poll says this node advertises (the flags are the whole truth: none withdraws)."""
        return pb.RouteAdvert(routes=self.advertise_routes, exit_node=self.advertise_exit_node)


def new_wg_key() -> tuple[str, bytes]:
    """(private key hex, public key raw) of a fresh WireGuard key."""
    k = x25519.X25519PrivateKey.generate()
    priv = k.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return priv.hex(), pub


def wg_public(priv_hex: str) -> bytes:
    k = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(priv_hex))
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fatal_for(e: ControlError, server: str) -> FatalError:
    if e.reason == "revoked":
        return FatalError(f"{e.message.removeprefix('controller refused: ')}")
    if e.reason == "certificate_expired":
        return FatalError(
            "the node certificate has expired; re-enrol the node with a new token "
            "(remove state.db from the state dir, then run with --token)"
        )
    return FatalError(e.message)


class Agent:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.store = StateStore(opts.state_dir)
        self.ipc = IpcClient(opts.cvland_socket)
        self.ident: Identity | None = None
        self.client: NodeApiClient | None = None
        self.held = 0
        self.pending: DesiredState | None = None
        self.applied = 0
        self.status: DeviceStatus | None = None
        self.health_sent: HealthSent | None = None
        """The peer health last delivered to the controller (None: none yet)."""
        self.ipc_error = ""
        self.polls = 0
        self.metrics = AgentMetrics()
        self.long_poll_s = opts.long_poll_s
        """What is asked for: --long-poll, at most the controller's max_long_poll_s (0: plain polling)."""
        self.discovered = False
        """The controller's long-poll setting is known; read again after a failed round (it may have
        restarted with another)."""
        self.disabled = False
        """The controller refuses this node until an administrator enables it again."""
        self._control_hosts: list[str] | None = None
        self.stop = asyncio.Event()
        """Set to stop the agent (run() takes the caller's)."""

    # --- enrolment -----------------------------------------------------------------------------

    async def load_or_enrol(self) -> Identity:
        ident = self.store.load()
        if ident is not None and self.opts.server and self.opts.server.rstrip("/") != ident.server:
            raise FatalError(
                f"state in {self.opts.state_dir} belongs to controller {ident.server}; "
                "use another --state-dir for another controller",
                2,
            )
        if ident is not None and tls.cert_not_after(ident.cert_pem) <= time.time():
            ident = await self.reauthenticate(ident, self.opts.token or "")
            self.store.save(ident)
            return ident
        if ident is not None:
            if self.opts.token:
                log.info("already enrolled; ignoring --token", extra={"node_id": ident.node_id})
            return ident
        if not self.opts.server or not self.opts.token:
            raise FatalError(
                "not enrolled yet: pass --server URL and --token TOKEN (see `cvlan token create`)", 2
            )
        if not self.opts.ca_pin:
            raise FatalError(
                "--ca-pin is required to enrol (the join command printed by `cvlan token create` carries it)",
                2,
            )
        try:
            tls.normalize_pin(self.opts.ca_pin)
        except ValueError as e:
            raise FatalError(str(e), 2) from e
        ident = await self.enrol(self.opts.server.rstrip("/"), self.opts.token, self.opts.ca_pin)
        self.store.save(ident)
        return ident

    async def enrol(self, server: str, token: str, pin: str) -> Identity:
        """Discover (CA checked against pin) and register; the new identity, not yet saved anywhere."""
        deadline = time.monotonic() + self.opts.enrol_timeout_s
        backoff = Backoff(cap=self.opts.backoff_cap_s)
        priv, pub = new_wg_key()
        key_pem, csr = tls.new_key_and_csr()
        hostname = self.opts.hostname or socket.gethostname()
        while True:
            try:
                d = await NodeApiClient.discover_pinned(server, pin)
                c = NodeApiClient(server, d.ca_pem)
                try:
                    reg = await c.register(
                        token, pub, csr, hostname, os_info=_os_info(), route_advert=self.opts.route_advert()
                    )
                finally:
                    await c.close()
                break
            except ControlError as e:
                if not e.retryable:
                    raise FatalError(_enrol_message(e)) from e
                if time.monotonic() >= deadline:
                    raise FatalError(e.message) from e
                delay = backoff.next()
                log.warning(f"{e.message}; retrying in {delay:.1f}s", extra={"reason": e.reason or "retry"})
                await asyncio.sleep(delay)
        ident = Identity(
            server=server,
            ca_pem=d.ca_pem,
            wg_private_key=priv,
            tls_key_pem=key_pem,
            cert_pem=reg.certificate_pem,
            node_id=reg.node_id,
            node_name=reg.node_name,
            address=reg.address,
            tenant_id=reg.tenant_id,
            cvlan_id=reg.cvlan_id,
            cvlan_name=reg.cvlan_name,
            cvlan_subnet=reg.cvlan_subnet,
            cert_obtained_at=time.time(),
        )
        log.info(
            f"enrolled as node {reg.node_name} ({reg.address}) in CVLAN {reg.cvlan_name}",
            extra={"node_id": reg.node_id, "tenant_id": reg.tenant_id, "cvlan": reg.cvlan_id},
        )
        return ident

    async def reauthenticate(self, ident: Identity, token: str) -> Identity:
        """Get a new certificate for the same node (id, name, address, WireGuard key) after the old
        one expired: the old certificate and a signature by its key, a proof that we hold the
        WireGuard key, and the token -- or, without one, a tenant admin's approval, asked for and
        waited for (asking again with backoff until approved, rejected or stopped)."""
        if token:
            log.warning("node certificate expired; re-authenticating as the same node with the given token")
        else:
            log.warning(
                "node certificate expired and no token given; asking a tenant admin to approve "
                "the re-authentication of this node"
            )
        backoff = Backoff(cap=self.opts.backoff_cap_s)
        waiting = False
        while True:
            key_pem, csr = tls.new_key_and_csr()
            try:
                reg = await self._reauth_once(ident, token, key_pem, csr)
                break
            except ControlError as e:
                if e.reason != "reauth_pending" and not e.retryable:
                    raise FatalError(
                        f"re-authentication refused: {e.message.removeprefix('controller refused: ')}"
                    ) from e
                if e.reason != "reauth_pending":
                    log.warning(f"{e.message}; retrying", extra={"reason": e.reason or "retry"})
                elif not waiting:
                    log.warning(e.message.removeprefix("controller refused: "), extra={"reason": e.reason})
                    waiting = True
            if await self._stopped_within(backoff.next()):
                raise FatalError(
                    "stopped while waiting for a tenant admin to approve the re-authentication", 0
                )
        ident.cert_pem, ident.tls_key_pem = reg.certificate_pem, key_pem
        ident.ca_pem = reg.ca_pem or ident.ca_pem
        ident.cert_obtained_at = time.time()
        log.info(
            f"re-authenticated as node {reg.node_name} ({reg.address})",
            extra={"node_id": reg.node_id, "tenant_id": reg.tenant_id},
        )
        return ident

    async def _reauth_once(self, ident: Identity, token: str, key_pem: str, csr: str) -> pb.RegisterResponse:
        c = NodeApiClient(ident.server, ident.ca_pem)
        try:
            return await c.reauthenticate(
                token, bytes.fromhex(ident.wg_private_key), csr, ident.cert_pem, ident.tls_key_pem
            )
        finally:
            await c.close()

    async def _stopped_within(self, delay: float) -> bool:
        """Wait delay seconds; True if the agent was told to stop meanwhile."""
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    # --- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.ident = await self.load_or_enrol()
        self.client = NodeApiClient(
            self.ident.server, self.ident.ca_pem, self.ident.cert_pem, self.ident.tls_key_pem
        )
        backoff = Backoff(cap=self.opts.backoff_cap_s)
        self.metrics.cert_expiry.set(tls.cert_not_after(self.ident.cert_pem))
        log.info(
            f"running as node {self.ident.node_name}",
            extra={
                "node_id": self.ident.node_id,
                "tenant_id": self.ident.tenant_id,
                "cvlan": self.ident.cvlan_id,
            },
        )
        reporter = asyncio.create_task(self._report_loop(stop))
        try:
            while not stop.is_set():
                delay = await self._step(backoff)
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self.client.close()
            await self.ipc.close()

    async def _report_loop(self, stop: asyncio.Event) -> None:
        """Every report interval: report the flows cvland's filter dropped and the peers' health."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.opts.report_interval_s)
                return
            except TimeoutError:
                pass
            await self._report()

    async def _report(self) -> None:
        assert self.client is not None
        if self.disabled:
            return  # refused until enabled; the poll loop has said so once
        try:
            rep = await asyncio.wait_for(self.ipc.denied(), STATUS_TIMEOUT_S)
            status = await asyncio.wait_for(self.ipc.status(), STATUS_TIMEOUT_S)
        except (IpcError, TimeoutError):
            return  # cvland unreachable: the poll loop already reports that in the health summary
        flows = [
            pb.DeniedFlow(src=f.src, dst=f.dst, proto=f.proto, dport=f.dport, packets=f.packets)
            for f in rep.flows[:MAX_DENIED_FLOWS]
        ]
        self.status = status
        health = self._health()
        peers, omitted = peer_health(status, time.time())
        sent = HealthSent(health_signature(peers), time.monotonic())
        if not flows and not sent.due_after(self.health_sent):
            return
        health.peers.extend(peers)
        health.peers_omitted = omitted
        try:
            # Goes once the long-poll held on the connection is answered (at most long_poll_s).
            await self.client.report(flows, health, wait_s=self.long_poll_s)
        except ControlError as e:
            reason = e.reason or "retry"
            log.warning(f"report not delivered: {e.message}", extra={"reason": reason})
            return
        self.health_sent = sent

    async def _step(self, backoff: Backoff) -> float:
        """One round: renew if due, read cvland's status, poll, push. Returns seconds to wait."""
        assert self.ident is not None and self.client is not None
        try:
            await self._renew_if_due()
            if not self.discovered:
                await self._discover()
            await self._read_status()
            if await self._push():
                # The state may have set the listen port (cvland reports no local endpoints until
                # then): report what cvland has now, not what it had before the push.
                await self._read_status()
            reported = self._endpoints()
            resp = await self.client.poll(
                self.held,
                reported,
                self._health(),
                self.status.home_relay_region if self.status else "",
                long_poll_s=self.long_poll_s,
                route_advert=self.opts.route_advert(),
            )
        except ControlError as e:
            self.metrics.polls["error"].inc()
            self.metrics.errors.labels(e.reason or (f"http_{e.status}" if e.status else "retry")).inc()
            self.discovered = False
            if e.reason == "disabled":
                return await self._on_disabled(e, backoff)
            if not e.retryable:
                raise fatal_for(e, self.ident.server) from e
            delay = backoff.next()
            log.warning(f"{e.message}; retrying in {delay:.1f}s", extra={"reason": e.reason or "retry"})
            return delay
        backoff.reset()
        self.polls += 1
        self.metrics.polls["unchanged" if resp.unchanged else "changed"].inc()
        if self.disabled:
            self.disabled = False
            log.info("the node is enabled again", extra={"node_id": self.ident.node_id})
        pushed = False
        if not resp.unchanged:
            self._on_map(resp.map)
            pushed = await self._push()
        if self.long_poll_s > 0:
            return 0.0  # the next round reads cvland's status before it polls
        if pushed and await self._endpoints_moved(reported):
            return 0.0
        interval = resp.poll_interval_s or 30
        return interval * random.uniform(0.9, 1.1)

    async def _discover(self) -> None:
        """Long-poll only as long as the controller holds polls (its max_long_poll_s; 0: it wants plain
        polling every poll interval, e.g. behind a proxy that cannot hold many waiting requests)."""
        assert self.client is not None
        d = await self.client.discover()
        self.long_poll_s = min(self.opts.long_poll_s, d.max_long_poll_s)
        self.discovered = True

    async def _on_disabled(self, e: ControlError, backoff: Backoff) -> float:
        """The node was disabled: drop every peer (its tunnels are gone on the peers' side anyway) and
        keep asking, so it comes back with the same identity once enabled. Logged once per change."""
        assert self.ident is not None
        delay = backoff.next()
        if not self.disabled:
            self.disabled = True
            msg = e.message.removeprefix("controller refused: ")
            log.warning(
                f"{msg}; asking again every {self.opts.backoff_cap_s:g}s at most",
                extra={"reason": "disabled", "node_id": self.ident.node_id},
            )
            # The same version, no peers: cvland keeps the interface and address, with no tunnel.
            self.pending = desired_state(self.ident, pb.NetworkMap(version=self.held), self.opts.listen_port)
            self.held = 0
            await self._push()
        return delay

    def _on_map(self, m: pb.NetworkMap) -> None:
        assert self.ident is not None
        self.held = m.version
        self.pending = desired_state(self.ident, m, self.opts.listen_port, self.control_hosts())
        log.info(
            f"new map: {len(m.peers)} peers, {len(m.vrouters)} vrouters",
            extra={"seq": m.version, "cvlan": self.ident.cvlan_id},
        )

    def control_hosts(self) -> list[str]:
        """The controller's addresses (resolved once), which an exit node must not carry."""
        if self._control_hosts is None:
            assert self.ident is not None
            self._control_hosts = resolve_hosts(self.ident.server)
        return self._control_hosts

    async def _push(self) -> bool:
        """Hand the pending desired state to cvland; True if cvland applied it."""
        if self.pending is None:
            return False
        try:
            self.applied = await self.ipc.apply(self.pending)
        except IpcError as e:
            self.ipc_error = e.message
            self.metrics.errors.labels("cvland_unreachable" if e.retryable else "cvland_refused").inc()
            if not e.retryable:
                log.warning(e.message, extra={"reason": "cvland_refused"})
                self.pending = None
            return False
        self.ipc_error = ""
        self.pending = None
        self.metrics.maps_applied.inc()
        self.metrics.applied_version.set(self.applied)
        return True

    async def _endpoints_moved(self, reported: list[str]) -> bool:
        """Whether cvland's endpoints differ from those just reported, after a push.

        cvland reports no local endpoints until the first desired state has set its listen port, and
        a desired state can change the port: the endpoints then change right after a poll. Reporting
        them only at the next poll interval would leave peers without a working candidate that long.
        Bounded: the next poll reports them, so the following round waits the interval again."""
        await self._read_status()
        return self.status is not None and self._endpoints() != reported

    async def _read_status(self) -> None:
        try:
            self.status = await asyncio.wait_for(self.ipc.status(), STATUS_TIMEOUT_S)
            self.ipc_error = ""
        except (IpcError, TimeoutError) as e:
            self.status = None
            self.ipc_error = e.message if isinstance(e, IpcError) else "cvland status timed out"
            if isinstance(e, TimeoutError):
                await self.ipc.close()

    def _endpoints(self) -> list[str]:
        if self.status is None:
            return []
        eps = list(self.status.local_endpoints)
        if self.status.mapped_endpoint:
            eps.insert(0, self.status.mapped_endpoint)
        return list(dict.fromkeys(eps))[:16]

    def _health(self) -> pb.HealthSummary:
        h = pb.HealthSummary(applied_version=self.applied, dataplane_error=self.ipc_error[:200])
        if self.status is not None and self.status.down:
            h.dataplane_error = "taken down on the node (cvlancli down)"
        if self.status is not None:
            h.applied_version = self.status.applied_version or self.applied
            h.peers_total = len(self.status.peers)
            h.peers_direct = sum(1 for p in self.status.peers if p.path == "direct")
            h.peers_relay = sum(1 for p in self.status.peers if p.path == "relay")
        return h

    async def _renew_if_due(self) -> None:
        assert self.ident is not None and self.client is not None
        na = tls.cert_not_after(self.ident.cert_pem)
        # Measured from when we got it, not from notBefore (the CA back-dates that for clock skew).
        nb = self.ident.cert_obtained_at or tls.cert_not_before(self.ident.cert_pem)
        now = time.time()
        if now >= na:
            # Expired while the controller was out of reach: come back as the same node.
            self.ident = await self.reauthenticate(self.ident, self.opts.token or "")
            self.store.save(self.ident)
            self.client.set_identity(self.ident.cert_pem, self.ident.tls_key_pem)
            self.metrics.cert_expiry.set(tls.cert_not_after(self.ident.cert_pem))
            self.held = 0
            return
        if now < nb + (na - nb) * RENEW_AT:
            return
        key_pem, csr = tls.new_key_and_csr()
        r = await self.client.renew(csr)
        self.ident.cert_pem, self.ident.tls_key_pem = r.certificate_pem, key_pem
        self.ident.ca_pem = r.ca_pem or self.ident.ca_pem
        self.ident.cert_obtained_at = now
        self.store.save(self.ident)
        self.client.set_identity(r.certificate_pem, key_pem)
        self.metrics.cert_expiry.set(tls.cert_not_after(r.certificate_pem))
        if self.pending is None and self.held:
            self.held = 0  # fetch the map again so cvland gets the new relay credentials
        log.info("certificate renewed", extra={"node_id": self.ident.node_id})


_PATHS = {
    "direct": pb.PEER_HEALTH_PATH_DIRECT,
    "relay": pb.PEER_HEALTH_PATH_RELAY,
    "vrouter": pb.PEER_HEALTH_PATH_VROUTER,
}


def peer_health(st: DeviceStatus, now: float) -> tuple[list[pb.PeerHealth], int]:
    """cvland's view of each CVLAN member, bounded to MAX_HEALTH_PEERS (worst first, so what is cut
    is healthy); and how many were left out. Vrouters themselves are not members."""
    members = [p for p in st.peers if p.node_id and not p.via_vrouter]
    return worst_first(
        [
            pb.PeerHealth(
                node_id=p.node_id,
                path=_PATHS.get(p.path, pb.PEER_HEALTH_PATH_NONE),
                relay_region=p.relay_region,
                handshake_age_s=int(now - p.last_handshake) if p.last_handshake > 0 else -1,
                rtt_us=int((p.rtt_ms or 0.0) * 1000),
                probes_sent=p.probes_sent,
                probes_answered=p.probes_answered,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
            )
            for p in members
        ]
    )


def _enrol_message(e: ControlError) -> str:
    msg = e.message.removeprefix("controller refused: ")
    if e.status == 401:
        return f"enrolment refused: {msg}"
    return msg


def _os_info() -> str:
    import platform

    return f"{platform.system().lower()} {platform.machine()} {platform.release()}"[:200]
