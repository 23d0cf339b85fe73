"""Simulated nodes: what cvlan-ctrl does on the wire, without WireGuard.

Each node generates its own WireGuard key and TLS key, registers with an enrollment token and a CSR,
then keeps one mutual-TLS keep-alive connection with its certificate, carrying its endpoints and a
health summary in every poll; it renews its certificate at 2/3 of its lifetime, and reports its
peers' health as cvlan-ctrl does (wire/peerhealth.py: looked at every report interval, sent when it
changed and otherwise every HEALTH_REFRESH_S, at most MAX_HEALTH_PEERS entries), with an entry per
peer of its map: a direct path, a steady RTT of its own per pair, every probe answered.

By default a node long-polls as cvlan-ctrl does (long_poll_s = 30): it asks again as soon as it has
an answer, and after a failed poll it waits as cvlan-ctrl's backoff would (exponential, jittered,
the same formula), so that a fleet thrown off by an overload does not come back all at once. In
plain mode (long_poll_s = 0) it polls on its interval with jitter; scheduling is then open loop:
every request has a scheduled send time fixed in advance and its latency is measured from that
time, so a slow controller shows up as latency instead of silently lowering the request rate."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import ssl
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cvlan.client.tls import NODE_KEY_TYPE
from cvlan.common import backoff
from cvlan.common.adminconf import AdminConf
from cvlan.common.pki import SigningKey, csr_for, new_key
from cvlan.sim.churn import POLICIES, Change, ChurnConfig, Quota, Receipt, pick
from cvlan.sim.httpconn import HttpConn, build_request
from cvlan.sim.metrics import Interval
from cvlan.sim.provision import Api, ProvisionError, Summary
from cvlan.wire import nodeproto
from cvlan.wire.pb import node_pb2 as pb
from cvlan.wire.peerhealth import REPORT_INTERVAL_S, HealthSent, Signature, health_signature, worst_first

CT = nodeproto.CT_PROTO
RECONNECT_CAP_S = 30.0
RETRY_BASE_S = 0.5
"""A failed poll is retried after cvlan-ctrl's backoff (common.backoff, from this to RECONNECT_CAP_S)."""
FREEZE_EVERY_S = 10
CHURN_SETTLE_S = 3.0
"""At the end of a run with churn, how long the fleet keeps polling without new changes before its
maps are checked: long enough for the last change's answers, a restart's reconnect and a join."""


@dataclass
class FleetConfig:
    """One worker's share of the fleet. Plain data, so it crosses a process boundary."""

    host: str
    port: int
    server_name: str
    ca_pem: str
    tokens: list[str]
    """One token text per node of this worker, in registration order."""
    first_index: int
    """Global index of this worker's first node (names are sim-NNNNNN)."""
    index_step: int
    reg_rate: float
    """Registrations per second for this worker (open loop)."""
    t0_wall: float
    """Wall-clock time at which registration starts (shared by all workers)."""
    poll_interval_s: float = 30.0
    jitter: float = 0.1
    """Each poll interval is drawn uniformly from interval * (1 +- jitter)."""
    report_interval_s: float = REPORT_INTERVAL_S
    """Look whether the peers' health is due for a report this often, as cvlan-ctrl (0: never)."""
    renew_after_s: float = 0.0
    """Renew the certificate this long after issue; 0: at 2/3 of its lifetime (like cvlan-ctrl)."""
    timeout_s: float = 30.0
    reg_conns: int = 8
    local_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    max_retries: int = 5
    long_poll_s: int = 30
    """Long-poll as cvlan-ctrl does, asking for this many seconds (at most the controller's
    max_long_poll_s, read from discover); 0: plain polling on the interval."""
    homes: list[tuple[str, str]] = field(default_factory=list)
    """(tenant, CVLAN) names of each token's CVLAN, in the order of tokens (churn needs them)."""
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    admin: AdminConf | None = None
    """The management API, for deletions and policy changes (churn)."""
    workers: int = 1


class SimNode:
    """One simulated node: its identity, its connection and its poll schedule."""

    __slots__ = (
        "idx",
        "token",
        "node_id",
        "map_version",
        "peers",
        "ctx",
        "conn",
        "queue",
        "polls",
        "cert_issued",
        "cert_not_after",
        "tls_key",
        "renewing",
        "connecting",
        "req",
        "timer",
        "next_due",
        "failures",
        "poll_failures",
        "cvlan_id",
        "home",
        "gen",
        "ep",
        "ep_sent",
        "long_poll",
        "discovered",
        "restarted",
        "deleted",
        "peer_ids",
        "up_at",
        "report_at",
        "health_sig",
        "health_sent",
        "health_pending",
    )

    def __init__(self, idx: int, token: str) -> None:
        self.idx = idx
        self.token = token
        self.node_id = 0
        self.map_version = 0
        self.peers = 0
        self.ctx: ssl.SSLContext | None = None
        self.conn: HttpConn | None = None
        self.queue: deque[tuple[str, float]] = deque()
        self.polls = 0
        self.cert_issued = 0.0
        self.cert_not_after = 0.0
        self.tls_key: SigningKey | None = None
        self.renewing = False
        self.connecting = False
        self.req = b""
        self.timer: asyncio.TimerHandle | None = None
        self.next_due = 0.0
        self.failures = 0
        """Consecutive failed connection attempts: the reconnect backoff grows with them."""
        self.poll_failures = 0
        """Consecutive failed long-polls: the retry backoff grows with them."""
        self.cvlan_id = 0
        self.home = -1
        """Index of the node's token and CVLAN names in Fleet.homes."""
        self.gen = 0
        """Bumped when the node restarts or is deleted: answers to its older requests are dropped."""
        self.ep = 0
        """Endpoint generation: a churn endpoint change moves the node to the next one."""
        self.ep_sent = 0.0
        """-1: the endpoint changed and no poll carried it yet; > 0: when the first poll carrying it
        was sent; 0: nothing pending."""
        self.long_poll = 0
        self.discovered = False
        self.restarted = 0.0
        self.deleted = False
        self.peer_ids: tuple[int, ...] = ()
        """The node ids of the peers in its map (its health report has an entry for each)."""
        self.up_at = 0.0
        """When it (re)started: its probes of its peers count from then."""
        self.report_at = 0.0
        """When it next looks whether its health is due for a report (0: not started)."""
        self.health_sig: Signature = ()
        self.health_sent: HealthSent | None = None
        """The last health report delivered (cvlan-ctrl's rule: HealthSent.due_after)."""
        self.health_pending: HealthSent | None = None

    @property
    def name(self) -> str:
        return f"sim-{self.idx:06d}"


def _error_kind(op: str, status: int, body: bytes, err: str) -> str:
    if err:
        return f"{op}_{err}"
    code = ""
    if body.startswith(b"{"):
        import json

        try:
            code = str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = ""
    return f"{op}_http_{status}" + (f"_{code}" if code else "")


class Fleet:
    """A worker's nodes, driven on one event loop."""

    def __init__(
        self, cfg: FleetConfig, loop: asyncio.AbstractEventLoop, interval: Callable[[], float] | None = None
    ) -> None:
        self.cfg = cfg
        self.interval = interval or (lambda: cfg.poll_interval_s)
        self.stop_registering: Callable[[], bool] = lambda: False
        self.loop = loop
        self.iv = Interval()
        self.nodes = [SimNode(cfg.first_index + i * cfg.index_step, t) for i, t in enumerate(cfg.tokens)]
        self.registered = 0
        self.settled = 0
        """Nodes whose registration ended, registered or given up (after retries or a refusal)."""
        self.connected = 0
        self.inflight = 0
        self.stopping = False
        self.churn_over = False
        """No more churn: the run is ending and the last changes are settling (drain)."""
        self.rng = random.Random(cfg.first_index)
        self.loop_t0 = loop.time() + (cfg.t0_wall - time.time())
        self._reg_pool: asyncio.Queue[HttpConn] = asyncio.Queue()
        self._reg_made = 0
        self._tmp = Path(
            tempfile.mkdtemp(prefix="cvlan-sim-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        )
        self._host = f"{cfg.server_name}:{cfg.port}"
        self._ip_i = 0
        self._seen: set[str] = set()
        self.record: Callable[[], bool] = lambda: False
        """Churn and receipts are on (the steady state and after)."""
        self.homes = [
            (t, *(cfg.homes[i] if i < len(cfg.homes) else ("", ""))) for i, t in enumerate(cfg.tokens)
        ]
        for i, n in enumerate(self.nodes):
            n.home = i
            n.long_poll = cfg.long_poll_s
        self.changes: list[Change] = []
        self.receipts: list[Receipt] = []
        self.joined: list[tuple[int, int, float]] = []
        self.left: list[tuple[int, float]] = []
        self.deleted = 0
        self._quotas = {k: Quota() for k in ("restart", "endpoint", "join", "delete")}
        self._policy_due = 0.0
        self._policies: dict[tuple[str, str], int] = {}
        self._api: Api | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._discover = build_request("GET", "/v1/discover", self._host, b"", CT)

    # --- bookkeeping -----------------------------------------------------------------

    def take_interval(self) -> Interval:
        iv, self.iv = self.iv, Interval()
        iv.gauges = {
            "nodes": len(self.nodes),
            "registered": self.registered,
            "settled": self.settled,
            "connected": self.connected,
            "inflight": self.inflight,
            "queued": sum(len(n.queue) for n in self.nodes) if self.stopping else 0,
            "deleted": self.deleted,
        }
        return iv

    def take_churn(self) -> dict[str, list[Any]]:
        """What churn did since the last call, and the full maps received, for the propagation figures."""
        out: dict[str, list[Any]] = {
            "chg": [tuple(c) for c in self.changes],
            "rcv": [tuple(r) for r in self.receipts],
            "join": self.joined,
            "left": self.left,
        }
        self.changes, self.receipts, self.joined, self.left = [], [], [], []
        return out

    def _err(self, kind: str, detail: str = "") -> None:
        self.iv.errors[kind] += 1
        if kind not in self._seen:
            self._seen.add(kind)
            self.iv.samples[kind] = detail[:300]

    # --- registration ----------------------------------------------------------------

    async def _reg_conn(self) -> HttpConn:
        while True:
            if self._reg_pool.empty() and self._reg_made < self.cfg.reg_conns:
                self._reg_made += 1
                try:
                    return await self._open(self._client_ctx(None))
                except (OSError, ssl.SSLError, TimeoutError):
                    self._reg_made -= 1
                    raise
            conn = await self._reg_pool.get()
            if not conn.closed:
                return conn
            self._reg_made -= 1

    def _client_ctx(self, cert_and_key: bytes | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.cfg.ca_pem)
        if cert_and_key is not None:
            # load_cert_chain only reads files: write to a private tmpfs file and remove it at once.
            fd, path = tempfile.mkstemp(dir=self._tmp)
            try:
                os.write(fd, cert_and_key)
                os.close(fd)
                ctx.load_cert_chain(path)
            finally:
                os.unlink(path)
        return ctx

    async def _open(self, ctx: ssl.SSLContext) -> HttpConn:
        ip = self.cfg.local_ips[self._ip_i % len(self.cfg.local_ips)]
        self._ip_i += 1
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(
                HttpConn,
                self.cfg.host,
                self.cfg.port,
                ssl=ctx,
                server_hostname=self.cfg.server_name,
                local_addr=(ip, 0),
                ssl_handshake_timeout=self.cfg.timeout_s,
            ),
            self.cfg.timeout_s,
        )
        return proto

    def _call(self, conn: HttpConn, data: bytes) -> asyncio.Future[tuple[int, bytes, str]]:
        fut: asyncio.Future[tuple[int, bytes, str]] = self.loop.create_future()

        def done(status: int, body: bytes, err: str) -> None:
            timer.cancel()
            if not fut.done():
                fut.set_result((status, body, err))

        timer = self.loop.call_later(self.cfg.timeout_s, conn.abort, "timeout")
        conn.request(data, done)
        return fut

    async def register_all(self) -> None:
        """Start each node's registration at its scheduled time: t0 + i / rate."""
        tasks: set[asyncio.Task[None]] = set()
        for i, node in enumerate(self.nodes):
            if self.stopping or self.stop_registering():
                break
            due = self.loop_t0 + i / self.cfg.reg_rate
            delay = due - self.loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            t = asyncio.create_task(self._register_guarded(node, due))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _register_guarded(self, node: SimNode, due: float, join: bool = False) -> None:
        try:
            await self._register(node, due, join)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - count it, show the first one, keep the fleet going
            kind = f"register_exception_{type(e).__name__}"
            if not self.iv.errors[kind]:
                traceback.print_exc(file=sys.stderr)
            self._err(kind, str(e))
        finally:
            self.settled += 1

    async def _register(self, node: SimNode, due: float, join: bool = False) -> None:
        wg_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
        key = new_key(NODE_KEY_TYPE)  # as cvlan-ctrl makes them
        # As cvlan-ctrl: every registration and poll says what the node advertises (here nothing).
        req = nodeproto.register_request(
            node.token, wg_pub, csr_for(key, node.name), node.name, "cvlan-sim", pb.RouteAdvert()
        )
        data = build_request("POST", "/v1/register", self._host, req.SerializeToString(), CT)
        for attempt in range(self.cfg.max_retries + 1):
            # The fleet's registration phase may end before every queued registration was sent (the
            # run's --reg-timeout): those are not sent then. Nodes joining later (churn) still are.
            if self.stopping or (not join and self.stop_registering()):
                return
            try:
                conn = await self._reg_conn()
            except (OSError, ssl.SSLError, TimeoutError) as e:
                self._err(f"register_connect_{type(e).__name__}", str(e))
                await asyncio.sleep(min(0.5 * 2**attempt, 10) * self.rng.uniform(0.5, 1))
                continue
            self.inflight += 1
            status, body, err = await self._call(conn, data)
            self.inflight -= 1
            self._reg_pool.put_nowait(conn)
            if status in (200, 201):
                resp = nodeproto.decode(pb.RegisterResponse, body)
                self.iv.hist["register"].record(self.loop.time() - due)
                self.iv.ok["register"] += 1
                self.registered += 1
                node.node_id = resp.node_id
                node.cvlan_id = resp.cvlan_id
                now = time.time()
                self.joined.append((node.idx, node.cvlan_id, now))
                if join:
                    self.changes.append(Change("join", node.cvlan_id, now - (self.loop.time() - due), now))
                    self.iv.ok["join"] += 1
                node.tls_key = key
                self._set_cert(node, resp.certificate_pem, resp.certificate_not_after)
                node.token = ""
                await self._connect_and_start(node)
                return
            self._err(_error_kind("register", status, body, err), body.decode(errors="replace"))
            if status and status not in (429, 500, 502, 503, 504):
                return
            await asyncio.sleep(min(0.5 * 2**attempt, 10) * self.rng.uniform(0.5, 1))

    def _set_cert(self, node: SimNode, cert_pem: str, not_after: int) -> None:
        assert node.tls_key is not None
        key_pem = node.tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        node.ctx = self._client_ctx(cert_pem.encode() + key_pem)
        node.cert_issued = time.time()
        node.cert_not_after = float(not_after)

    async def _connect_and_start(self, node: SimNode) -> None:
        # cvlan-ctrl (re)starting: its report loop starts over, with no health reported yet.
        node.up_at = self.loop.time()
        node.report_at = node.up_at + self.cfg.report_interval_s
        node.health_sent = node.health_pending = None
        if await self._connect(node):
            self.connected += 1
        # The first poll goes out at once (version 0: full map), the next ones on the interval. If
        # the connection could not be opened, the poll's pump reconnects with a backoff, like a
        # node whose connection dropped.
        self._fire(node, self.loop.time())

    async def _connect(self, node: SimNode) -> bool:
        assert node.ctx is not None
        node.connecting = True
        t = self.loop.time()
        try:
            node.conn = await self._open(node.ctx)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            self._err(f"connect_{type(e).__name__}", str(e))
            return False
        finally:
            node.connecting = False
        self.iv.hist["connect"].record(self.loop.time() - t)
        self.iv.ok["connect"] += 1
        return True

    # --- polls, reports, renewals ----------------------------------------------------

    def _next_interval(self) -> float:
        j = self.cfg.jitter
        return self.interval() * self.rng.uniform(1 - j, 1 + j)

    def _fire(self, node: SimNode, due: float) -> None:
        """A scheduled poll: queue it on the node and schedule the next one (plain polling; a long-poll
        is followed by the next when it is answered)."""
        if self.stopping or node.deleted:
            return
        long = node.long_poll > 0
        if not node.discovered:  # as cvlan-ctrl: at start and after a failed round
            node.queue.append(("discover", due))
        if not long:
            node.queue.append(("poll", due))
        node.polls += 1
        if self._report_due(node):
            node.queue.append(("report", due))
        if self._renew_due(node):
            node.renewing = True
            node.queue.append(("renew", due))
        if long:  # as cvlan-ctrl: renew (and report) first, then the poll that may be held
            node.queue.append(("poll", due))
            self._pump(node)
            return
        nxt = due + self._next_interval()
        node.next_due = nxt
        node.timer = self.loop.call_at(nxt, self._fire, node, nxt)
        self._pump(node)

    def respread(self, interval: float, previous: float) -> int:
        """The poll interval changed: put the fleet at the new rate at once instead of letting it ramp
        over one old interval. Shorter: a node whose next poll lies further away than one new interval
        polls at a uniformly drawn time within it instead (the others are already spread uniformly
        there). Longer: every next poll is drawn again within the new interval (otherwise they all
        fall within the old, shorter one, and the fleet polls at the old rate, then not at all).
        Returns how many polls were moved."""
        if self.cfg.long_poll_s:
            return 0  # long-polls follow one another, not the interval
        now = self.loop.time()
        longer = interval > previous
        moved = 0
        for node in self.nodes:
            if node.timer is None or (not longer and node.next_due - now <= interval):
                continue
            node.timer.cancel()
            due = now + self.rng.uniform(0, interval)
            node.next_due = due
            node.timer = self.loop.call_at(due, self._fire, node, due)
            moved += 1
        return moved

    def _report_due(self, node: SimNode) -> bool:
        """cvlan-ctrl's report loop: every report interval from its start, a report if the peers'
        health changed or was last reported HEALTH_REFRESH_S ago. (Its loop runs apart from its polls;
        here the look is taken before the next poll once the interval is over.)"""
        iv = self.cfg.report_interval_s
        now = self.loop.time()
        if not iv or not node.report_at or now < node.report_at or node.health_pending is not None:
            return False
        node.report_at += iv * max(1, int((now - node.report_at) // iv) + 1)
        return HealthSent(node.health_sig, now).due_after(node.health_sent)

    def _peer_health(self, node: SimNode) -> tuple[list[pb.PeerHealth], int]:
        """Plausible entries for the peers of its map: a direct path, a steady RTT of 1-40 ms of its
        own per pair, a probe every 2 s since it started (the last 20 kept), every one answered."""
        age = self.loop.time() - node.up_at
        probes = max(1, min(20, int(age / 2)))
        return worst_first(
            [
                pb.PeerHealth(
                    node_id=pid,
                    path=pb.PEER_HEALTH_PATH_DIRECT,
                    handshake_age_s=int(age) % 120,
                    rtt_us=1000 + (node.idx * 7919 + pid * 104729) % 39000,
                    probes_sent=probes,
                    probes_answered=probes,
                    rx_bytes=int(age) * 96,
                    tx_bytes=int(age) * 96,
                )
                for pid in node.peer_ids
            ]
        )

    def _renew_due(self, node: SimNode) -> bool:
        if node.renewing or not node.cert_issued:
            return False
        after = self.cfg.renew_after_s or (node.cert_not_after - node.cert_issued) * 2 / 3
        return time.time() - node.cert_issued >= after

    def _pump(self, node: SimNode) -> None:
        """Send the node's next queued request if its connection is free."""
        conn = node.conn
        if not node.queue or node.connecting:
            return
        if conn is None or conn.closed:
            if conn is not None:
                node.conn = None
                self.connected -= 1
                self._err("conn_lost_reconnect")
            self.loop.create_task(self._reconnect(node))
            return
        if conn.busy:
            return
        op, due = node.queue.popleft()
        data = self._body(node, op)
        immediate = op != "poll" or node.map_version == 0 or node.ep_sent != 0
        if op == "poll" and node.ep_sent < 0:
            node.ep_sent = time.time()  # the first poll that carries the new endpoint
        self.inflight += 1
        self.iv.ok[f"{op}_sent"] += 1
        held = node.long_poll if op == "poll" else 0  # as cvlan-ctrl: its timeout plus the wait
        timer = self.loop.call_later(self.cfg.timeout_s + held, conn.abort, "timeout")
        gen = node.gen

        def done(status: int, body: bytes, err: str) -> None:
            timer.cancel()
            self.inflight -= 1
            if gen != node.gen:
                return  # the node restarted or was deleted since: its old connection's answer
            ok = self._done(node, op, due, status, body, err)
            if ok:
                self._time_answer(node, op, due, immediate, body)
            if held:
                self._next_long_poll(node, ok)
            self._pump(node)

        conn.request(data, done)

    def _time_answer(self, node: SimNode, op: str, due: float, immediate: bool, body: bytes) -> None:
        """The latency of answers the controller gives at once, apart from held long-polls; and by how
        much a held long-poll outlasted its hold."""
        lat = self.loop.time() - due
        if immediate:
            self.iv.hist["answer"].record(lat)
        elif op == "poll" and node.long_poll and lat >= node.long_poll:
            self.iv.hist["held_excess"].record(lat - node.long_poll)

    def _next_long_poll(self, node: SimNode, ok: bool) -> None:
        """A long-poll was answered: the next one at once, or after cvlan-ctrl's backoff if it failed."""
        if node.deleted:
            return
        if ok:
            node.poll_failures = 0
            self.loop.call_soon(self._fire_now, node)
            return
        wait = backoff.delay(node.poll_failures, RETRY_BASE_S, RECONNECT_CAP_S, self.rng)
        node.poll_failures += 1
        node.discovered = False  # as cvlan-ctrl: discover again, the controller may have changed
        node.timer = self.loop.call_later(wait, self._fire_now, node)

    def _fire_now(self, node: SimNode) -> None:
        self._fire(node, self.loop.time())

    def reconnect_delay(self, node: SimNode) -> float:
        """How long a node whose connection is gone waits before it opens a new one, as cvlan-ctrl: a
        long-polling node has just waited the agent's backoff after its failed poll, so it connects at
        once (the next round); a failed attempt is a failed round, so the wait grows as the agent's
        (common.backoff.delay). A node polling plainly waits the same backoff, by its failed attempts."""
        if node.long_poll and not node.failures:
            return 0.0
        return backoff.delay(node.failures, RETRY_BASE_S, RECONNECT_CAP_S, self.rng)

    async def _reconnect(self, node: SimNode) -> None:
        node.connecting = True
        try:
            await asyncio.sleep(self.reconnect_delay(node))
        finally:
            node.connecting = False
        if self.stopping or node.deleted or (node.conn is not None and not node.conn.closed):
            return
        if await self._connect(node):
            node.failures = 0
            self.connected += 1
            self._pump(node)
        elif not self.stopping:
            node.failures += 1
            if node.long_poll:
                # A failed round: the agent's backoff, then discover and poll again.
                node.queue.clear()
                self._next_long_poll(node, False)
            else:
                self._pump(node)

    def _body(self, node: SimNode, op: str) -> bytes:
        if op == "discover":
            return self._discover
        if op == "poll":
            if not node.req:
                # Endpoints in documentation space: nobody dials them; the controller only stores them.
                k = node.idx + 7919 * node.ep
                ep = f"198.51.100.{k % 250 + 1}:{41641 + k % 20000}"
                health = pb.HealthSummary(
                    peers_total=node.peers, peers_direct=node.peers, applied_version=node.map_version
                )
                req = nodeproto.poll_request(
                    node.map_version, [ep], health, "", node.long_poll, pb.RouteAdvert()
                )
                node.req = build_request("POST", "/v1/poll", self._host, req.SerializeToString(), CT)
            return node.req
        if op == "report":
            peers, omitted = self._peer_health(node)
            node.health_pending = HealthSent(health_signature(peers), self.loop.time())
            health = pb.HealthSummary(
                peers_total=node.peers,
                peers_direct=node.peers,
                applied_version=node.map_version,
                peers=peers,
                peers_omitted=omitted,
            )
            rep = pb.ReportRequest(capability_version=nodeproto.CAPABILITY_VERSION, health=health)
            return build_request("POST", "/v1/report", self._host, rep.SerializeToString(), CT)
        assert node.tls_key is not None
        ren = nodeproto.renew_request(csr_for(node.tls_key, node.name))
        return build_request("POST", "/v1/renew", self._host, ren.SerializeToString(), CT)

    def _done(self, node: SimNode, op: str, due: float, status: int, body: bytes, err: str) -> bool:
        """Count an answer; whether it was a good one."""
        if op == "report":  # as cvlan-ctrl: the health counts as reported once a report was delivered
            if status == 200 and node.health_pending is not None:
                node.health_sent = node.health_pending
            node.health_pending = None
        if status != 200:
            self._err(_error_kind(op, status, body, err), body.decode(errors="replace"))
            if op == "renew":
                node.renewing = False
            return False
        try:
            if op == "poll":
                self._poll_answer(node, nodeproto.decode(pb.PollResponse, body))
            elif op == "discover":
                d = nodeproto.decode(pb.DiscoverResponse, body)
                node.long_poll = min(self.cfg.long_poll_s, d.max_long_poll_s)
                node.discovered = True
                node.req = b""
            elif op == "renew":
                r = nodeproto.decode(pb.RenewResponse, body)
                self._set_cert(node, r.certificate_pem, r.certificate_not_after)
                node.renewing = False
        except (nodeproto.WireError, ValueError, ssl.SSLError) as e:
            self._err(f"{op}_bad_answer_{type(e).__name__}", str(e))
            return False
        self.iv.hist[op].record(self.loop.time() - due)
        self.iv.ok[op] += 1
        return True

    def _poll_answer(self, node: SimNode, r: Any) -> None:
        if r.unchanged:
            self.iv.ok["poll_unchanged"] += 1
            if r.map_version != node.map_version:
                raise ValueError("unchanged answer with another version")
            return
        if r.map.self.node_id != node.node_id:
            raise ValueError("map for another node")
        self.iv.ok["poll_full"] += 1
        node.map_version = r.map_version
        node.peers = len(r.map.peers)
        ids = tuple(p.node_id for p in r.map.peers)
        if ids != node.peer_ids:  # what its next health report's signature is (health_signature)
            node.peer_ids = ids
            node.health_sig = health_signature(self._peer_health(node)[0])
        node.req = b""
        now = time.time()
        if self.record():
            self.receipts.append(Receipt(node.idx, node.cvlan_id, r.map_version, now))
        if node.restarted:
            self.iv.hist["restart"].record(now - node.restarted)
            self.iv.ok["restart"] += 1
            node.restarted = 0.0
        if node.ep_sent > 0:
            self.changes.append(Change("endpoint", node.cvlan_id, node.ep_sent, now))
            node.ep_sent = 0.0

    # --- churn -----------------------------------------------------------------------

    def churn_tick(self) -> None:
        """One second of churn: this worker's share of restarts, endpoint changes, joins, deletions
        and policy changes (churn.py)."""
        c = self.cfg.churn
        if not c.active or self.stopping or self.churn_over:
            return
        steady = [n for n in self.nodes if self._steady(n)]
        q = self._quotas
        for n in pick(self.rng, list(range(len(steady))), q["restart"].take(c.restart, len(steady))):
            self._restart(steady[n])
        for n in pick(self.rng, list(range(len(steady))), q["endpoint"].take(c.endpoint, len(steady))):
            self._move(steady[n])
        for _ in range(q["join"].take(c.join, len(steady))):
            self._join(self.rng.choice(steady))
        for n in pick(self.rng, list(range(len(steady))), q["delete"].take(c.delete, len(steady))):
            self._spawn(self._delete(steady[n]))
        if c.admin_every_s and steady:
            now = self.loop.time()
            if not self._policy_due:
                self._policy_due = now + self.rng.uniform(0, c.admin_every_s * self.cfg.workers)
            elif now >= self._policy_due:
                self._policy_due = now + c.admin_every_s * self.cfg.workers
                self._spawn(self._change_policy(self.rng.choice(steady)))

    def _steady(self, n: SimNode) -> bool:
        """Registered, connected, not deleted, with nothing of its own under way (restart, renewal,
        an endpoint change not yet reported)."""
        return (
            bool(n.node_id)
            and not n.deleted
            and not n.renewing
            and not n.connecting
            and not n.restarted
            and not n.ep_sent
            and n.conn is not None
            and not n.conn.closed
        )

    def _spawn(self, coro: Any) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _drop(self, node: SimNode) -> None:
        """Forget the node's connection, schedule and requests under way (restart, deletion)."""
        node.gen += 1
        if node.timer is not None:
            node.timer.cancel()
            node.timer = None
        node.queue.clear()
        node.renewing = False
        node.poll_failures = 0
        if node.conn is not None:
            if not node.conn.closed:
                self.connected -= 1
            node.conn.close()
            node.conn = None

    def _restart(self, node: SimNode) -> None:
        """As cvlan-ctrl restarting: a new connection with the same identity, discover, then a poll
        with no map version (it asks for its full map)."""
        self._drop(node)
        node.restarted = time.time()
        node.map_version = 0
        node.discovered = False
        node.req = b""
        self.iv.ok["restart_sent"] += 1
        self._spawn(self._connect_and_start(node))

    def _move(self, node: SimNode) -> None:
        """The node's endpoint changed: its next poll reports it (as cvlan-ctrl does)."""
        node.ep += 1
        node.req = b""
        node.ep_sent = -1.0
        self.iv.ok["endpoint_change"] += 1

    def _join(self, like: SimNode) -> None:
        """A new node joins the CVLAN of `like` with the CVLAN's token."""
        idx = self.cfg.first_index + len(self.nodes) * self.cfg.index_step
        node = SimNode(idx, self.homes[like.home][0])
        node.home, node.long_poll = like.home, self.cfg.long_poll_s
        self.nodes.append(node)
        self.iv.ok["join_sent"] += 1
        self._spawn(self._register_guarded(node, self.loop.time(), join=True))

    def _admin(self) -> Api:
        if self._api is None:
            assert self.cfg.admin is not None
            self._api = Api(self.cfg.admin, 4, Summary())
        return self._api

    async def _delete(self, node: SimNode) -> None:
        """An administrator deletes the node (management API); it stops at once."""
        _, tenant, _ = self.homes[node.home]
        self._drop(node)
        node.deleted = True
        sent = time.time()
        self.left.append((node.idx, sent))
        try:
            status, body = await self._admin().call(
                "DELETE", f"/api/v1/tenants/{tenant}/nodes/{node.node_id}"
            )
        except ProvisionError as e:
            self._err("delete_exception", str(e))
            return
        if status != 204:
            self._err(f"delete_http_{status}", str(body))
            return
        self.changes.append(Change("delete", node.cvlan_id, sent, time.time()))
        self.iv.ok["delete"] += 1
        self.deleted += 1
        node.node_id = 0

    async def _change_policy(self, node: SimNode) -> None:
        """An administrator replaces the policy of the node's CVLAN with the other simulated one."""
        _, tenant, cvlan = self.homes[node.home]
        cur = self._policies.get((tenant, cvlan), 0)
        sent = time.time()
        path = f"/api/v1/tenants/{tenant}/cvlans/{cvlan}/policy"
        try:
            status, body = await self._admin().call("PUT", path, POLICIES[1 - cur])
        except ProvisionError as e:
            self._err("policy_exception", str(e))
            return
        if status != 200:
            self._err(f"policy_http_{status}", str(body))
            return
        self._policies[(tenant, cvlan)] = 1 - cur
        if body.get("changed"):
            self.changes.append(Change("policy", node.cvlan_id, sent, time.time()))
        self.iv.ok["policy"] += 1

    # --- lifecycle -------------------------------------------------------------------

    def churn_settle_s(self) -> float:
        """How long the fleet keeps polling after its last change before its maps are checked. A
        long-polling member gets a change at once; a plainly polling one at its next poll, up to one
        interval (with its jitter) later: checked sooner, it would be counted stale."""
        if self.cfg.long_poll_s:
            return CHURN_SETTLE_S
        return max(CHURN_SETTLE_S, self.interval() * (1 + self.cfg.jitter) + 1.0)

    def check_maps(self) -> None:
        """Every change reached every member: the nodes of a CVLAN hold one version, with as many peers
        as the most any of them sees (all the other members, when one worker holds the whole fleet).
        Counted as ok map_current, or as the error map_stale."""
        groups: dict[int, list[SimNode]] = {}
        for n in self.nodes:
            if n.node_id and not n.deleted:
                groups.setdefault(n.cvlan_id, []).append(n)
        whole = self.cfg.index_step == 1
        for cid, members in groups.items():
            # A node that restarted just before the end may not have its map yet: not checked, but
            # still a peer of the others.
            holding = [n for n in members if not n.restarted]
            self.iv.ok["map_restarting"] += len(members) - len(holding)
            if not holding:
                continue
            versions = [n.map_version for n in holding]
            current = max(set(versions), key=versions.count)
            peers = len(members) - 1 if whole else max(n.peers for n in holding)
            for n in holding:
                if n.map_version == current and n.peers == peers:
                    self.iv.ok["map_current"] += 1
                else:
                    self._err(
                        "map_stale",
                        f"{n.name} in CVLAN {cid} holds version {n.map_version} with {n.peers} peers; "
                        f"the others hold {current} with {peers}",
                    )

    async def drain(self, timeout: float) -> None:
        """Stop the churn and let its last changes settle: those under way end first (a join
        registers, a DELETE or PUT is answered, a restart connects), then the fleet still polls for
        CHURN_SETTLE_S, so that every member gets the last maps. Then stop scheduling, wait for
        answers in flight, check the maps and close every connection."""
        if self.cfg.churn.active and not self.churn_over:
            self.churn_over = True
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=timeout)
            await asyncio.sleep(self.churn_settle_s())
        self.stopping = True
        deadline = self.loop.time() + timeout
        while self.inflight and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.check_maps()
        for n in self.nodes:
            n.queue.clear()
            n.gen += 1  # long-polls still held are cut by the run's end, not failed
            if n.conn is not None:
                n.conn.close()
        while not self._reg_pool.empty():
            self._reg_pool.get_nowait().close()
        if self._api is not None:
            await self._api.close()
        await asyncio.sleep(0.1)
        try:
            os.rmdir(self._tmp)
        except OSError:
            pass


def run_worker(
    cfg: FleetConfig,
    report: Callable[[dict[str, Any]], None],
    stop: Callable[[], bool],
    interval: Callable[[], float] | None = None,
    stop_registering: Callable[[], bool] | None = None,
    record: Callable[[], bool] | None = None,
) -> None:
    """Run one worker's fleet until stop() is true; report(interval) every second. While record() is
    true the fleet churns and keeps what propagation needs (churn.py)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio also works
        pass
    asyncio.run(_worker(cfg, report, stop, interval, stop_registering, record))


async def _worker(
    cfg: FleetConfig,
    report: Callable[[dict[str, Any]], None],
    stop: Callable[[], bool],
    interval: Callable[[], float] | None,
    stop_registering: Callable[[], bool] | None,
    record: Callable[[], bool] | None,
) -> None:
    loop = asyncio.get_running_loop()
    fleet = Fleet(cfg, loop, interval)
    if stop_registering is not None:
        fleet.stop_registering = stop_registering
    if record is not None:
        fleet.record = record
    reg = asyncio.create_task(fleet.register_all())
    next_tick = loop.time() + 1.0
    current = fleet.interval()
    ticks = 0
    while not stop():
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        next_tick += 1.0
        ticks += 1
        if ticks % FREEZE_EVERY_S == 0:
            # The nodes, their TLS contexts and connections live for the whole run: keep them out of
            # the collector's full scans (at 5,000 nodes per worker one took ~0.1 s, a latency
            # spike the controller did not cause). What is frozen is still freed by reference
            # counting; only reference cycles in it would stay, and a poll creates none that outlive it.
            gc.freeze()
        now_iv = fleet.interval()
        if abs(now_iv - current) > current * 0.01:
            fleet.respread(now_iv, current)
        current = now_iv
        if fleet.record():
            fleet.churn_tick()
        report({"t": time.time(), "iv": fleet.take_interval().to_wire(), "churn": fleet.take_churn()})
    # Not stopping yet: with churn the fleet keeps polling (and the last joins register) while its
    # last changes settle; drain() stops it after that.
    await fleet.drain(timeout=min(cfg.timeout_s, 10.0))
    reg.cancel()
    report(
        {"t": time.time(), "iv": fleet.take_interval().to_wire(), "churn": fleet.take_churn(), "final": True}
    )
