"""Relay fallback for cvland: per-peer path selection (direct first, relay when direct fails, back to
direct when it works), the local relay proxy, STUN of the WireGuard port and the home relay.

Threading: the Daemon plans and ticks in its worker thread; relay connections, the proxy sockets
and STUN live on the event loop. ``RelayPath`` methods called by the Daemon only read plain values
or hand work to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
from dataclasses import dataclass
from typing import Protocol

from cvlan.client.relay import RelayPool, RelayProxy, node_ssl
from cvlan.client.stun import RawStunProber, StunResult
from cvlan.common.clock import Clock
from cvlan.cvland.paths import PROBE_SECONDS, STALE_SECONDS, Choice
from cvlan.cvland.relaychoice import RelayChoice
from cvlan.wire.endpoint import split_hostport
from cvlan.wire.ipc import DesiredState, RelayInfo
from cvlan.wire.keys import KeyHex, public_of

log = logging.getLogger(__name__)

DIRECT_RETRY_SECONDS = 15.0
"""First wait on the relay before trying direct again; doubles after each failed try."""
DIRECT_RETRY_MAX = 300.0
PROBE_EVERY = 5.0
"""How often a relayed peer's direct candidates are probed (cheap: one STUN request each)."""
STUN_INTERVAL = 30.0
"""Re-probe the WireGuard port's mapping this often (also keeps the NAT mapping alive)."""
GONE_SKIP_S = 30.0
"""After a relay said a peer is not connected there, pass it over for that peer this long."""
STUN_RETRY_FIRST = 2.0
"""After a round where no STUN server answered, retry this soon; doubles up to STUN_INTERVAL."""


class RelayPaths(Protocol):
    generation: int
    """Bumped when this host's public mapping changes (its NAT or network changed)."""

    def available(self, relay_region: str) -> bool:
        """Whether a relay path exists for a peer homed in relay_region."""
        ...

    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        """A local endpoint that reaches peer through a relay, or None if there is none."""
        ...

    def is_proxy(self, endpoint: str) -> bool:
        """Whether endpoint is one of our relay proxy ports."""
        ...

    def request_probe(self, peer: str, candidates: tuple[str, ...]) -> None:
        """Probe the peer's direct candidates in the background."""
        ...

    def direct_ok(self, peer: str) -> str | None:
        """A candidate of peer that answered a probe recently (taken once), or None."""
        ...


class NoRelayPaths:
    """RelayPaths where no relay is configured: every peer is tried on its direct candidates only."""

    generation = 0

    def available(self, relay_region: str) -> bool:
        return False

    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        return None

    def is_proxy(self, endpoint: str) -> bool:
        return False

    def request_probe(self, peer: str, candidates: tuple[str, ...]) -> None:
        pass

    def direct_ok(self, peer: str) -> str | None:
        return None


@dataclass(slots=True)
class _Peer:
    candidates: tuple[str, ...]
    region: str
    relay: bool = False
    """On the relay path (else trying or using candidates[index])."""
    index: int = 0
    since: float = 0.0
    """Monotonic time of the last switch."""
    since_wall: float = 0.0
    connected: bool = False
    retry_delay: float = DIRECT_RETRY_SECONDS
    retry_at: float = -math.inf
    """While relayed, do not move to direct before this time (after a failed move)."""
    probe_at: float = -math.inf
    """Next direct-path probe while relayed."""
    retrying: bool = False
    """The current direct attempt is a retry from the relay (its failure doubles the delay)."""
    override: str = ""
    """A direct endpoint WireGuard roamed to (the peer reached us from there), used instead of the
    candidates until the next switch."""


class PathSelector:
    """Chooses direct or relay per peer from handshake times (pure logic over an injected clock).

    A switch re-creates the WireGuard peer (see ``take_recreate``), so the handshake on the new path
    starts at once and a handshake time after the switch proves that path."""

    def __init__(
        self,
        clock: Clock,
        relay: RelayPaths,
        probe_s: float = PROBE_SECONDS,
        stale_s: float = STALE_SECONDS,
        retry_s: float = DIRECT_RETRY_SECONDS,
        retry_max_s: float = DIRECT_RETRY_MAX,
        probe_every_s: float = PROBE_EVERY,
    ) -> None:
        self._probe_every_s = probe_every_s
        self._clock = clock
        self._relay = relay
        self._probe_s = probe_s
        self._stale_s = stale_s
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._peers: dict[str, _Peer] = {}
        self._recreate: set[str] = set()
        self._generation = relay.generation

    def set_peers(self, peers: dict[str, tuple[tuple[str, ...], str]]) -> None:
        """key -> (candidates, relay_region); peers whose candidates are unchanged keep their state."""
        nxt: dict[str, _Peer] = {}
        now = self._clock.monotonic()
        for key, (cands, region) in peers.items():
            old = self._peers.get(key)
            if old is not None and old.candidates == cands:
                old.region = region
                nxt[key] = old
            elif old is not None and (old.relay or old.connected):
                # New candidates (e.g. a fresh STUN mapping) for a working peer: keep the path in
                # use; a relayed peer tries the new candidates at once (the peer, which got the same
                # map update, does the same, so both sides punch at about the same time).
                if not old.relay and not old.override:
                    old.override = old.candidates[old.index % len(old.candidates)] if old.candidates else ""
                old.candidates, old.region, old.index = cands, region, len(cands) - 1 if cands else 0
                if old.relay:
                    old.retry_at = old.probe_at = now
                    old.retry_delay = self._retry_s
                nxt[key] = old
            elif old is not None and cands:
                # Still trying direct when more candidates arrived (typically our peer's STUN mapping,
                # a few seconds after it joined): keep the attempt's clock, so the move to the relay is
                # not put off by every map update.
                old.candidates, old.region = cands, region
                nxt[key] = old
            else:
                p = _Peer(cands, region, retry_delay=self._retry_s)
                self._mark(p)
                if not cands and self._relay.available(region):
                    p.relay = True
                nxt[key] = p
        self._peers = nxt

    def _mark(self, p: _Peer) -> None:
        p.override = ""
        p.since = self._clock.monotonic()
        p.since_wall = self._clock.now().timestamp()
        p.connected = False

    def _relay_ep(self, key: str, p: _Peer) -> str | None:
        return self._relay.endpoint_for(key, p.region)

    def choice(self, key: str) -> Choice:
        p = self._peers.get(key)
        if p is None:
            return Choice("", "none")
        if p.relay:
            ep = self._relay_ep(key, p)
            if ep:
                # The daemon reports "none" anyway while no handshake is fresh.
                return Choice(ep, "relay")
        if p.override:
            return Choice(p.override, "direct" if p.connected else "none")
        if p.candidates:
            return Choice(p.candidates[p.index % len(p.candidates)], "direct" if p.connected else "none")
        return Choice("", "none")

    def _on_network_change(self) -> None:
        """Our public mapping changed: every relayed peer tries direct again now."""
        if self._relay.generation == self._generation:
            return
        self._generation = self._relay.generation
        now = self._clock.monotonic()
        for p in self._peers.values():
            if p.relay:
                p.retry_at = p.probe_at = now
                p.retry_delay = self._retry_s

    def _follow_roaming(self, key: str, p: _Peer, endpoint: str) -> bool:
        """WireGuard moves a peer's endpoint to wherever authenticated packets come from. If the peer
        reached us over the other path, follow it (without re-creating: the session works)."""
        now = self._clock.monotonic()
        if p.relay and not self._relay.is_proxy(endpoint):
            p.relay, p.override, p.connected = False, endpoint, True
            p.retry_delay, p.retry_at, p.retrying = self._retry_s, -math.inf, False
            return True
        if not p.relay and self._relay.is_proxy(endpoint) and self.choice(key).endpoint != endpoint:
            p.relay, p.override, p.connected = True, "", True
            p.probe_at = now
            return True
        return False

    def _fresh(self, p: _Peer, last_handshake: float) -> bool:
        """A handshake younger than stale_s that happened on the current path (after the last switch)."""
        wall = self._clock.now().timestamp()
        return (
            last_handshake > 0
            and wall - last_handshake < self._stale_s
            and last_handshake >= p.since_wall - 1
        )

    def note_roaming(self, key: str, last_handshake: float, endpoint: str) -> None:
        """Keep a direct endpoint WireGuard roamed to while its handshake is fresh.

        Behind a NAT the peer's candidates (its local addresses) are unreachable, but the peer's own
        handshake makes WireGuard move to the NAT's public address, which works. Without this the
        endpoint in the plan stays a candidate, and the next plan that changes it (new candidates in
        a map update) writes a candidate over the working address: traffic then goes nowhere while
        the fresh handshake keeps the selector from looking further. The daemon calls this on every
        tick and just before a new desired state is applied."""
        p = self._peers.get(key)
        if p is None or p.relay or not endpoint or self._relay.is_proxy(endpoint):
            return
        if self._fresh(p, last_handshake) and endpoint != self.choice(key).endpoint:
            p.override = endpoint

    def take_recreate(self) -> set[str]:
        """Peers whose path changed since the last call: re-create them in WireGuard."""
        out, self._recreate = self._recreate, set()
        return out

    def _switch(self, key: str, p: _Peer, relay: bool, index: int | None = None) -> None:
        p.relay = relay
        if index is not None:
            p.index = index
        self._mark(p)
        self._recreate.add(key)

    def observe(self, key: str, last_handshake: float, endpoint: str = "") -> bool:
        """Feed the device's last handshake time (Unix seconds, 0 = never) and the endpoint it uses;
        True if the choice changed."""
        p = self._peers.get(key)
        if p is None:
            return False
        self._on_network_change()
        if endpoint and last_handshake > 0 and self._follow_roaming(key, p, endpoint):
            return True
        now = self._clock.monotonic()
        fresh = self._fresh(p, last_handshake)
        has_relay = self._relay.available(p.region)
        if p.relay and p.candidates:
            # Keep probing direct while relayed, without disturbing the relayed session: cvland
            # sends STUN Binding requests from the WireGuard port to the candidates (the peer's
            # cvland answers from its WireGuard port). Move only once one answered.
            if now >= p.probe_at:
                self._relay.request_probe(key, p.candidates)
                p.probe_at = now + self._probe_every_s
            ep = self._relay.direct_ok(key) if now >= p.retry_at else None
            if ep:
                self._switch(key, p, relay=False)
                p.override, p.retrying = ep, True
                return True
        if fresh:
            self.note_roaming(key, last_handshake, endpoint)
            if not p.connected:
                p.connected = True
                if not p.relay:
                    p.retry_delay, p.retry_at, p.retrying = self._retry_s, -math.inf, False
            return False
        if p.connected:  # the path went stale: look for one again
            p.connected = False
        if now - p.since < self._probe_s:
            return False
        if not p.relay and has_relay:
            if p.retrying:  # a probe answered but WireGuard could not shake hands: hold off
                p.retry_at = now + p.retry_delay
                p.retry_delay = min(p.retry_delay * 2, self._retry_max_s)
            p.retrying = False
            self._switch(key, p, relay=True)
            return True
        if p.candidates and (p.relay or len(p.candidates) > 1):
            nxt = p.index if p.relay else (p.index + 1) % len(p.candidates)
            self._switch(key, p, relay=False, index=nxt)
            return True
        return False


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("STUN of the WireGuard port stopped", extra={"reason": repr(exc)})


def _stun_servers(relays: dict[str, list[RelayInfo]]) -> set[tuple[str, str]]:
    return {(region, info.stun) for region, infos in relays.items() for info in infos if info.stun}


def _public_key(private_hex: str) -> bytes:
    """Our WireGuard public key (empty for a private key that is not one: no relay order then)."""
    try:
        return bytes.fromhex(public_of(KeyHex(private_hex)))
    except ValueError:
        return b""


def _by_region(relays: list[RelayInfo]) -> dict[str, list[RelayInfo]]:
    """Every relay of the map, grouped by region (each region's in URL order)."""
    out: dict[str, list[RelayInfo]] = {}
    for r in sorted(relays, key=lambda r: r.url):
        out.setdefault(r.region, []).append(r)
    return out


class RelayPath:
    """Relay connections, the proxy and STUN for one cvland; the ``RelayPaths`` of PathSelector."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stun_interval: float = STUN_INTERVAL) -> None:
        self.loop = loop
        self.stun_interval = stun_interval
        self.proxy = RelayProxy(loop, 0)
        self.pool: RelayPool | None = None
        self._lock = threading.Lock()
        self._relays: dict[str, list[RelayInfo]] = {}
        self._creds: tuple[str, str, str] = ("", "", "")
        self._listen_port = 0
        self._own = b""
        """Our WireGuard public key: it places us on our home region's relays."""
        self.home_region = ""
        self.home_url = ""
        self._stun_best = ""
        """The region with the best STUN round-trip time (home unless all its relays are down)."""
        self._routed: dict[bytes, str] = {}
        """Relayed peers (key -> home region), routed again whenever a relay comes or goes."""
        self._gone: dict[bytes, dict[str, float]] = {}
        """Per peer: relays that said (PEER_GONE) it is not there, and when."""
        self.mapped_endpoint = ""
        self.rtts: dict[str, float] = {}
        self.generation = 0
        self._prober: RawStunProber | None = None
        self._probing: set[str] = set()
        self._reachable: dict[str, tuple[str, float]] = {}
        self._stun_task: asyncio.Task[None] | None = None
        self._stun_wake = asyncio.Event()

    # --- called from the daemon's worker thread -----------------------------------------------------

    def configure(self, ds: DesiredState) -> None:
        relays = _by_region(ds.relays)
        with self._lock:
            self._own = _public_key(ds.private_key)
            if self.home_region not in relays:
                self.home_region = next(iter(relays), "")
            # A new port or a new set of STUN servers (e.g. the first map that lists relays) is
            # probed at once, not at the next interval.
            restun = ds.listen_port != self._listen_port
            restun |= _stun_servers(relays) != _stun_servers(self._relays)
            self._relays = relays
            self._listen_port = ds.listen_port
            self.proxy.wg_port = ds.listen_port
            self.proxy.allowed = {bytes.fromhex(p.public_key) for p in ds.peers}
        creds = (ds.tls_cert_pem, ds.tls_key_pem, ds.ca_pem)
        self.loop.call_soon_threadsafe(self._on_loop_configure, creds, restun)

    def _has_relay(self, region: str) -> bool:
        with self._lock:
            return bool(self._relays.get(region) or self._relays.get(self.home_region))

    def request_probe(self, peer: str, candidates: tuple[str, ...]) -> None:
        self.loop.call_soon_threadsafe(self._start_probe, peer, candidates)

    def direct_ok(self, peer: str) -> str | None:
        got = self._reachable.pop(peer, None)
        if got is None or self.loop.time() - got[1] > 10.0:
            return None
        return got[0]

    def is_proxy(self, endpoint: str) -> bool:
        try:
            host, port = split_hostport(endpoint)
        except ValueError:
            return False
        return host == self.proxy.host and self.proxy.has_port(port)

    def available(self, relay_region: str) -> bool:
        return self._has_relay(relay_region) and all(self._creds) and self._listen_port > 0

    def endpoint_for(self, peer: str, relay_region: str) -> str | None:
        """127.0.0.1:<proxy port> for peer, sending through the peer's home relay (see relaychoice)."""
        if not self.available(relay_region):
            return None
        key = bytes.fromhex(peer)
        port = self.proxy.add_peer(key, None)
        self.loop.call_soon_threadsafe(self._route, key, relay_region)
        return f"{self.proxy.host}:{port}"

    # --- on the event loop --------------------------------------------------------------------------

    def _on_loop_configure(self, creds: tuple[str, str, str], restun: bool) -> None:
        if creds != self._creds and all(creds):
            try:
                ctx: ssl.SSLContext = node_ssl(*creds)
            except (ssl.SSLError, ValueError) as e:
                log.warning("relay credentials unusable", extra={"reason": str(e)})
                return
            old = self.pool
            self.pool = RelayPool(ctx, self.proxy, on_change=self._reroute, on_gone=self._peer_gone)
            self._creds = creds
            if old is not None:
                self.loop.create_task(old.retain(set()))
        if self.pool is not None:
            with self._lock:
                urls = {i.url for infos in self._relays.values() for i in infos}
            self.loop.create_task(self.pool.retain(urls))
        self._routed = {k: r for k, r in self._routed.items() if k in self.proxy.allowed}
        self._gone = {k: g for k, g in self._gone.items() if k in self._routed}
        self._reroute()
        if self._stun_task is None:
            self._stun_task = self.loop.create_task(self._stun_loop())
            self._stun_task.add_done_callback(_report_exit)
        elif restun:
            self._stun_wake.set()

    def _choice(self) -> RelayChoice:
        pool = self.pool
        with self._lock:
            regions = {r: [i.url for i in infos] for r, infos in self._relays.items()}
        return RelayChoice(regions, pool.down if pool is not None else lambda _: False)

    def _reroute(self) -> None:
        """Choose the home relay and every relayed peer's relay again (a relay came or went, the
        map or the STUN ranking changed). Stays connected to the home relay: peers reach us there."""
        if self.pool is None:
            return
        choice = self._choice()
        with self._lock:
            preferred = self._stun_best if self._stun_best in choice.regions else self.home_region
        region, url = choice.home(self._own, preferred, self.rtts)
        if (region, url) != (self.home_region, self.home_url):
            log.info("home relay chosen", extra={"relay_region": region, "endpoint": url})
            with self._lock:
                self.home_region, self.home_url = region, url
        if url:
            self.pool.get(url)
        for key, peer_region in list(self._routed.items()):
            self._set_route(choice, key, peer_region)

    def _set_route(self, choice: RelayChoice, key: bytes, region: str) -> None:
        now = self.loop.time()
        skip = frozenset(u for u, t in self._gone.get(key, {}).items() if now - t < GONE_SKIP_S)
        url = choice.for_peer(key, region, self.home_url, skip)
        if url is not None and self.pool is not None:
            self.proxy.set_route(key, self.pool.get(url))

    def _peer_gone(self, url: str, key: bytes) -> None:
        """The relay at url says key is not connected there: if we route key through it, try the
        next relay of the key's order (the peer sees that relay as down, we do not)."""
        region = self._routed.get(key)
        if region is None or self.pool is None or self.proxy.route_of(key) is not self.pool.clients.get(url):
            return
        gone = self._gone.setdefault(key, {})
        gone[url] = self.loop.time()
        log.info("peer not at its relay; trying the next", extra={"peer": key.hex()[:8], "endpoint": url})
        self._set_route(self._choice(), key, region)

    def _route(self, key: bytes, region: str) -> None:
        self._routed[key] = region
        self._set_route(self._choice(), key, region)

    def _start_probe(self, peer: str, candidates: tuple[str, ...]) -> None:
        if self._prober is None or peer in self._probing:
            return
        self._probing.add(peer)
        task = self.loop.create_task(self._probe_direct(self._prober, peer, candidates))
        task.add_done_callback(lambda _: self._probing.discard(peer))

    async def _probe_direct(self, prober: RawStunProber, peer: str, candidates: tuple[str, ...]) -> None:
        """Send one Binding request to every candidate at once; the first answer wins."""

        async def one(ep: str) -> str:
            await prober.probe(split_hostport(ep), timeout=1.0, attempts=2)
            return ep

        tasks = [asyncio.ensure_future(one(ep)) for ep in candidates if not ep.startswith("[")]
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    ep = await fut
                except (OSError, TimeoutError, ValueError):
                    continue
                self._reachable[peer] = (ep, self.loop.time())
                log.info("direct path answers", extra={"peer": peer[:8], "endpoint": ep})
                return
        finally:
            for t in tasks:
                t.cancel()

    async def _stun_loop(self) -> None:
        prober: RawStunProber | None = None
        port = 0
        retry = STUN_RETRY_FIRST
        try:
            while True:
                with self._lock:
                    relays = {r: [i for i in infos if i.stun] for r, infos in self._relays.items()}
                    want = self._listen_port
                if want != port and prober is not None:
                    prober.close()
                    prober = self._prober = None
                if prober is None and want > 0:
                    try:
                        prober = RawStunProber(want)
                        prober.listen()  # also answers peers' direct-path probes
                        self._prober = prober
                        port = want
                    except PermissionError:
                        log.warning("STUN of the WireGuard port needs CAP_NET_RAW; not probing")
                        return
                wait = self.stun_interval
                if prober is not None and any(relays.values()):
                    if await self._probe_all(prober, relays):
                        retry = STUN_RETRY_FIRST
                    else:  # no STUN server answered: try again sooner than the interval
                        wait, retry = min(wait, retry), min(retry * 2, self.stun_interval)
                self._stun_wake.clear()
                try:
                    await asyncio.wait_for(self._stun_wake.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            self._prober = None
            if prober is not None:
                prober.close()

    async def _probe_all(self, prober: RawStunProber, relays: dict[str, list[RelayInfo]]) -> bool:
        """Probe every relay's STUN server (a region's round-trip time is its best); False if none
        answered."""
        results: dict[str, StunResult] = {}
        for region, infos in relays.items():
            for info in infos:
                try:
                    res = await prober.probe(split_hostport(info.stun), timeout=1.0, attempts=2)
                except (OSError, TimeoutError, ValueError) as e:
                    log.info("STUN probe failed", extra={"relay_region": region, "reason": str(e)})
                    continue
                if region not in results or res.rtt < results[region].rtt:
                    results[region] = res
        if not results:
            return False
        self.rtts = {r: res.rtt for r, res in results.items()}
        home = min(results, key=lambda r: results[r].rtt)
        mapped = results[home].mapped
        text = f"{mapped[0]}:{mapped[1]}"
        if text != self.mapped_endpoint:
            if self.mapped_endpoint:
                log.info("public mapping changed", extra={"endpoint": text})
                self.generation += 1
            self.mapped_endpoint = text
        if home != self._stun_best:
            with self._lock:
                self._stun_best = home
            self._reroute()
        return True

    async def close(self) -> None:
        if self._stun_task is not None:
            self._stun_task.cancel()
            try:
                await self._stun_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.pool is not None:
            await self.pool.close()
        self.proxy.close()
