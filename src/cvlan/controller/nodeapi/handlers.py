"""The node API: /v1/discover, /v1/register, /v1/poll (with long-poll), /v1/renew, /v1/report.

Bodies are protobuf (cvlan.wire.pb.node_pb2); JSON is accepted and answered for debugging.
Errors are raised as DomainError and rendered by the application's one error middleware."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from aiohttp import web
from google.protobuf.message import Message
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cvlan import __version__
from cvlan.controller.audit import request_id_var
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.health.book import HealthBook
from cvlan.controller.health.matrix import classify
from cvlan.controller.mapper.cache import CvlanMap, Mapper, Member, valid_endpoint
from cvlan.controller.mapper.fanout import Fanout
from cvlan.controller.mapper.liveness import LivenessBuffer
from cvlan.controller.nodeapi.adverts import AdvertWriter, advert_of
from cvlan.controller.nodeapi.enrol import EnrolmentBatcher
from cvlan.controller.nodeapi.identity import IdentityResolver
from cvlan.controller.ops import health, nodes, reauth, registration, subnets
from cvlan.controller.ops.context import OpsContext, periodically
from cvlan.wire import nodeproto as wire
from cvlan.wire.certid import NodeIdentity
from cvlan.wire.ids import CvlanId
from cvlan.wire.pb import node_pb2 as pb

log = logging.getLogger(__name__)

MAX_LONG_POLL_S = 60
RELAY_REFRESH_S = 10.0
STOP_TIMEOUT_S = 10.0
POLLS = Counter("cvlan_node_polls_total", "Node polls", ["result"])
POLLS_UNCHANGED = POLLS.labels("unchanged")
POLLS_FULL = POLLS.labels("full")
REGISTRATIONS = Counter("cvlan_node_registrations_total", "Node registrations", ["result"])

M = TypeVar("M", bound=Message)


class NodeApi:
    """State of the node API: map cache, liveness buffer, identity resolver, CA."""

    def __init__(self, ctx: OpsContext, ca: CertificateAuthority) -> None:
        self.ctx = ctx
        self.ca = ca
        st = ctx.settings
        # A node polling every poll_interval_s is written at least every refresh + interval (+ one
        # flush): with refresh = offline_after - 2 x interval the stored last_seen never ages past
        # offline_after while the node polls, and about every other unchanged poll is not written.
        # The ephemeral sweeper removes nodes whose stored last_seen is older than
        # ephemeral_offline_s: when that is the shorter, it bounds the refresh, or a node still
        # polling would be taken for gone.
        bound = min(st.offline_after_s, st.ephemeral_offline_s)
        self.liveness = LivenessBuffer(ctx, max(0.0, bound - 2.0 * st.poll_interval_s))
        self.mapper = Mapper(ctx, self.liveness.pending_endpoints)
        self.liveness.on_health_events = self._health_events
        self.health_book = HealthBook()
        """The pair gauges and event counters of the peer health reports (health/book.py)."""
        self.identity = IdentityResolver(ca, ctx.proxies)
        self.ca_pem = ca.cert_pem.decode()
        self.reauth_public = ca.reauth_public()
        self.closing = False
        ctx.on_cvlan_changed.append(self.mapper.on_changed)
        # SQLite has one writer; queueing registrations here avoids its busy-wait sleeps (up to 100 ms
        # each) when many transactions contend for the write lock. PostgreSQL runs them concurrently.
        self._write_lock = contextlib.nullcontext() if "postgresql" in ctx.settings.db_url else asyncio.Lock()
        self.enrolments = EnrolmentBatcher(ctx, ca, self._write_lock, self.register_alone)
        self.adverts = AdvertWriter(ctx)

    # --- plumbing ------------------------------------------------------------------------------

    async def body(self, request: web.Request, cls: type[M]) -> tuple[M, str]:
        ct = request.content_type if request.content_type == wire.CT_JSON else wire.CT_PROTO
        if request.content_length is not None and request.content_length > wire.MAX_REQUEST_BYTES:
            raise DomainError(Kind.TOO_LARGE, f"request body is larger than {wire.MAX_REQUEST_BYTES} bytes")
        return self.decode(cls, await request.read(), ct), ct

    def decode(self, cls: type[M], raw: bytes, ct: str) -> M:
        """A request body as its message; INVALID, TOO_LARGE or PRECONDITION (capability) if not."""
        if len(raw) > wire.MAX_REQUEST_BYTES:
            raise DomainError(Kind.TOO_LARGE, f"request body is larger than {wire.MAX_REQUEST_BYTES} bytes")
        try:
            msg = wire.decode(cls, raw, ct)
        except wire.WireError as e:
            raise DomainError(Kind.INVALID, str(e)) from e
        refusal = wire.check_capver(getattr(msg, "capability_version", wire.CAPABILITY_VERSION))
        if refusal:
            raise DomainError(Kind.PRECONDITION, refusal, {"reason": "capability_version"})
        return msg

    def reply(self, msg: Message | bytes, ct: str, cls: type[Message] | None = None) -> web.Response:
        return web.Response(body=encode(msg, ct, cls), content_type=ct)

    def caller(self, ident: NodeIdentity) -> registration.Caller:
        return registration.Caller(ident.node_id, ident.tenant_id, ident.wg_key)

    # --- routes --------------------------------------------------------------------------------

    async def discover(self, request: web.Request) -> web.Response:
        ct = wire.CT_JSON if wire.CT_JSON in request.headers.get("Accept", "") else wire.CT_PROTO
        return self.reply(self.answer_discover(), ct)

    def answer_discover(self) -> pb.DiscoverResponse:
        return pb.DiscoverResponse(
            capability_version=wire.CAPABILITY_VERSION,
            min_capability_version=wire.MIN_SUPPORTED_CAPVER,
            ca_pem=self.ca_pem,
            ca_fingerprint=self.ca.fingerprint,
            relay_map=self.mapper.relay_map,
            poll_interval_s=self.ctx.settings.poll_interval_s,
            max_long_poll_s=min(MAX_LONG_POLL_S, self.ctx.settings.max_long_poll_s),
            server_version=__version__,
            reauth_public_key=self.reauth_public,
        )

    async def register(self, request: web.Request) -> web.Response:
        req, ct = await self.body(request, pb.RegisterRequest)
        ident = self.identity.optional(request, self.ctx.now())
        return self.reply(await self.answer_register(ident, req), ct)

    async def answer_register(
        self, ident: NodeIdentity | None, req: pb.RegisterRequest
    ) -> pb.RegisterResponse:
        """Enrol a node with a token (ident: the caller's certificate, when it re-registers)."""
        if len(req.hostname) > 253 or len(req.os_info) > 200:
            raise DomainError(Kind.INVALID, "hostname or os_info is too long", {"field": "hostname"})
        advert = advert_of(req.route_advert) if req.HasField("route_advert") else None
        enrol = registration.Enrolment(
            req.token, req.wg_public_key, req.csr_pem, req.hostname, req.os_info, request_id_var.get()
        )
        try:
            # A node with a certificate re-registers alone, and so does one that re-authenticates
            # (reauth.py); enrolments with a token go in batches.
            if ident is None and req.token and not req.previous_certificate_pem:
                got = await self.enrolments.submit(enrol)
            else:
                got = await self.register_alone(enrol, ident, req)
        except DomainError as e:
            REGISTRATIONS.labels(e.kind.value).inc()
            if isinstance(e, reauth.ReauthRefused):
                await reauth.record_refusal(self.ctx, e)
                log.warning("node re-authentication refused", extra={"reason": e.message[:200]})
            elif isinstance(e, reauth.ReauthPending):
                # A concurrent attempt may have recorded it first: the node asks again anyway.
                with contextlib.suppress(DomainError):
                    await reauth.record_pending(self.ctx, e)
                log.info(
                    "node re-authentication waits for approval",
                    extra={"node_id": e.node_id, "tenant_id": e.tenant_id},
                )
            raise
        REGISTRATIONS.labels("ok").inc()
        n, c = got.node, got.cvlan
        if advert is not None:
            async with self.ctx.tx() as s:
                await subnets.store_advert(self.ctx, s, n.id, advert)
        log.info("node registered", extra={"tenant_id": n.tenant_id, "cvlan": c.id, "node_id": n.id})
        return pb.RegisterResponse(
            node_id=n.id,
            node_name=n.name,
            address=f"{n.address}/32",
            tenant_id=n.tenant_id,
            cvlan_id=c.id,
            cvlan_name=c.name,
            cvlan_subnet=c.subnet,
            certificate_pem=got.cert_pem,
            certificate_not_after=int(got.not_after.timestamp()),
            ca_pem=self.ca_pem,
            relay_map=self.mapper.relay_map,
            poll_interval_s=self.ctx.settings.poll_interval_s,
        )

    async def register_alone(
        self,
        e: registration.Enrolment,
        ident: NodeIdentity | None = None,
        req: pb.RegisterRequest | None = None,
    ) -> registration.Issued:
        """Register one node in its own transaction (req: its re-authentication proofs, if any)."""
        proofs = req or pb.RegisterRequest()
        async with self._write_lock, self.ctx.tx() as s:
            return await registration.register(
                self.ctx,
                s,
                self.ca,
                token=e.token,
                wg_public_key=e.wg_public_key,
                csr_pem=e.csr_pem,
                hostname=e.hostname,
                os_info=e.os_info,
                caller=self.caller(ident) if ident else None,
                previous_cert_pem=proofs.previous_certificate_pem,
                previous_key_signature=proofs.previous_key_signature,
                wg_key_proof=proofs.wg_key_proof,
            )

    async def poll(self, request: web.Request) -> web.Response:
        now = self.ctx.now()  # one clock reading: the certificate's expiry and the liveness share it
        ident = self.identity.require(request, now)
        req, ct = await self.body(request, pb.PollRequest)
        return self.reply(await self.answer_poll(ident, req, now), ct, pb.PollResponse)

    async def answer_poll(
        self, ident: NodeIdentity, req: pb.PollRequest, now: dt.datetime | None = None
    ) -> Message | bytes:
        """The answer to a poll (a PollResponse, or its encoded bytes): waits for a change if asked.
        `now` as for record_poll."""
        m, me = await self.mapper.map_for_node(ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id)
        wait = self.record_poll(ident, req, m, me, now)
        return await self.wait_poll(ident, req, m, wait) if wait else self.poll_answer(ident, req, m)

    def record_poll(
        self,
        ident: NodeIdentity,
        req: pb.PollRequest,
        m: CvlanMap,
        me: Member,
        now: dt.datetime | None = None,
    ) -> float:
        """Take in what a poll says (endpoints, relay region, health, liveness); how long it may wait.
        `now`: the clock reading the caller checked the certificate with, so that a poll reads the
        clock once (None: read when the liveness is recorded)."""
        region = req.home_relay_region or None
        if len(req.home_relay_region) > 63:
            raise DomainError(Kind.INVALID, "home_relay_region is too long", {"field": "home_relay_region"})
        # The common poll repeats what the node said last time: compare before validating anything.
        if (req.endpoints and req.endpoints != me.endpoints) or (region and region != me.home_relay_region):
            eps = _endpoints(req.endpoints)
            if self.mapper.update_endpoints(m, me, eps or None, region):
                self.liveness.endpoints(ident.node_id, me.endpoints, me.home_relay_region)
        if req.HasField("route_advert"):
            self.adverts.note(me, req.route_advert)
        health = _health(req) if req.HasField("health") else None
        self.liveness.seen(ident.node_id, req.map_version, health, now)
        longest = min(MAX_LONG_POLL_S, self.ctx.settings.max_long_poll_s)
        if req.map_version == m.token and req.long_poll_s > 0 and longest > 0 and not self.closing:
            return float(min(req.long_poll_s, longest))
        return 0.0

    async def wait_poll(
        self, ident: NodeIdentity, req: pb.PollRequest, m: CvlanMap, wait: float
    ) -> Message | bytes:
        """Hold a long-poll until the node's CVLAN changes or `wait` seconds pass, then answer it.

        The wait may start a turn of the event loop after the poll was found current (the lean server
        runs it as a task): a change made in between has already woken the CVLAN, so the poll is
        answered at once if the map it was found current with is no longer the CVLAN's."""
        if self.mapper.is_current(m) and m.token == req.map_version:
            try:
                await asyncio.wait_for(self.mapper.waiter(m.cvlan_id).wait(), wait)
            except TimeoutError:
                return self.poll_answer(ident, req, m)
        m, _ = await self.mapper.map_for_node(ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id)
        return self.poll_answer(ident, req, m)

    def poll_answer(self, ident: NodeIdentity, req: pb.PollRequest, m: CvlanMap) -> Message | bytes:
        head = pb.PollResponse(
            map_version=m.token,
            poll_interval_s=self.ctx.settings.poll_interval_s,
            certificate_not_after=ident.not_after_unix,
        )
        if req.map_version == m.token:
            POLLS_UNCHANGED.inc()
            head.unchanged = True
            return head
        POLLS_FULL.inc()
        return m.body_for(ident.node_id, head)

    async def renew(self, request: web.Request) -> web.Response:
        ident = self.identity.require(request, self.ctx.now())
        req, ct = await self.body(request, pb.RenewRequest)
        return self.reply(await self.answer_renew(ident, req), ct)

    async def answer_renew(self, ident: NodeIdentity, req: pb.RenewRequest) -> pb.RenewResponse:
        async with self._write_lock, self.ctx.tx() as s:
            pem, not_after = await registration.renew(self.ctx, s, self.ca, self.caller(ident), req.csr_pem)
        log.info(
            "node certificate renewed",
            extra={"tenant_id": ident.tenant_id, "cvlan": ident.cvlan_id, "node_id": ident.node_id},
        )
        return pb.RenewResponse(
            certificate_pem=pem, certificate_not_after=int(not_after.timestamp()), ca_pem=self.ca_pem
        )

    async def report(self, request: web.Request) -> web.Response:
        ident = self.identity.require(request, self.ctx.now())
        req, ct = await self.body(request, pb.ReportRequest)
        return self.reply(await self.answer_report(ident, req), ct)

    async def answer_report(self, ident: NodeIdentity, req: pb.ReportRequest) -> pb.ReportResponse:
        m, _ = await self.mapper.map_for_node(ident.node_id, ident.tenant_id, ident.wg_key, ident.cvlan_id)
        if len(req.denied_flows) > wire.MAX_DENIED_FLOWS:
            raise DomainError(Kind.INVALID, f"at most {wire.MAX_DENIED_FLOWS} denied flows per report")
        flows = [_flow(f) for f in req.denied_flows]
        if req.HasField("health"):
            peers = peer_health(req.health)
            where = (ident.tenant_id, m.cvlan_id)
            self.liveness.health(ident.node_id, _health(req), peers if req.health.peers else None, where)
            if req.health.peers:
                self.health_book.report(ident.node_id, peers, self.ctx.clock.monotonic())
        accepted = 0
        if flows:
            async with self.ctx.tx() as s:
                accepted = await registration.report_denied(
                    self.ctx, s, self.caller(ident), CvlanId(m.cvlan_id), flows
                )
        return pb.ReportResponse(accepted=accepted)

    def _health_events(self, found: list[health.Found]) -> None:
        """Log and count the degradations and recoveries a liveness flush wrote."""
        self.health_book.count(f.event for f in found)
        for f in found:
            log.info(
                f"peer health: {f.event.kind} {f.event.detail}",
                extra={
                    "node_id": f.event.node_id,
                    "tenant_id": f.tenant_id,
                    "cvlan": f.cvlan_id,
                    "reason": f.event.kind,
                },
            )

    # --- lifecycle -----------------------------------------------------------------------------

    async def background(self, _: web.Application) -> AsyncIterator[None]:
        await self.mapper.start()
        engine = self.ctx.sessions.kw.get("bind")
        fanout = Fanout(self.mapper, engine) if isinstance(engine, AsyncEngine) else None
        if fanout is not None:
            try:
                if await fanout.start():
                    log.info("map changes fanned out to other controller processes (LISTEN/NOTIFY)")
            except (OSError, SQLAlchemyError) as e:
                log.warning(
                    "map fan-out not started; run one controller process", extra={"reason": str(e)[:200]}
                )
                fanout = None
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                self.liveness.run(self.ctx.settings.liveness_flush_s, stop), name="liveness-flush"
            ),
            asyncio.create_task(self._relay_loop(stop), name="relay-refresh"),
            asyncio.create_task(nodes.run_ephemeral_sweeper(self.ctx, stop), name="ephemeral-sweep"),
            asyncio.create_task(health.run_pruner(self.ctx, stop), name="health-prune"),
        ]
        yield
        # Let a database write or read in progress finish (and the last liveness flush be made);
        # cancel only what is still running after that.
        stop.set()
        late = (await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S))[1]
        for t in late:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.adverts.close()
        if fanout is not None:
            await fanout.stop()

    async def on_shutdown(self, _: web.Application) -> None:
        """Answer held long-polls now ("unchanged"), so that stopping does not wait for them to time out."""
        self.closing = True
        self.mapper.wake_all()

    async def _relay_loop(self, stop: asyncio.Event) -> None:
        await periodically(stop, RELAY_REFRESH_S, self.mapper.refresh_relays, "relay map refresh")


def _endpoints(raw: Iterable[str]) -> list[str]:
    eps = list(raw)
    if len(eps) > wire.MAX_ENDPOINTS:
        raise DomainError(Kind.INVALID, f"at most {wire.MAX_ENDPOINTS} endpoints", {"field": "endpoints"})
    for e in eps:
        if len(e) > wire.MAX_ENDPOINT_LEN or not valid_endpoint(e):
            raise DomainError(Kind.INVALID, f"endpoint {e[:70]!r}: expected ip:port", {"field": "endpoints"})
    return list(dict.fromkeys(eps))


def _health(req: pb.PollRequest | pb.ReportRequest) -> dict[str, object]:
    """The summary a poll or report carries (per-peer entries are taken from reports only)."""
    h = req.health
    return {
        "peers_total": h.peers_total,
        "peers_direct": h.peers_direct,
        "peers_relay": h.peers_relay,
        "applied_version": h.applied_version,
        "dataplane_error": h.dataplane_error[:200],
    }


_PATHS = {
    pb.PEER_HEALTH_PATH_NONE: "none",
    pb.PEER_HEALTH_PATH_DIRECT: "direct",
    pb.PEER_HEALTH_PATH_RELAY: "relay",
    pb.PEER_HEALTH_PATH_VROUTER: "vrouter",
}


def peer_health(h: pb.HealthSummary) -> list[dict[str, object]]:
    """A report's per-peer entries as stored (docs/HEALTH.md); INVALID beyond the bounds."""
    if len(h.peers) > wire.MAX_HEALTH_PEERS:
        raise DomainError(
            Kind.INVALID, f"at most {wire.MAX_HEALTH_PEERS} peers per health report", {"field": "health"}
        )
    out: list[dict[str, object]] = []
    for p in h.peers:
        if p.path not in _PATHS or p.probes_answered > p.probes_sent or len(p.relay_region) > 63:
            raise DomainError(
                Kind.INVALID,
                f"peer health of node {p.node_id}: bad path, region or probe counts",
                {"field": "health"},
            )
        entry: dict[str, object] = {
            "node_id": p.node_id,
            "path": _PATHS[p.path],
            "relay_region": p.relay_region,
            "handshake_age_s": p.handshake_age_s,
            "rtt_ms": round(p.rtt_us / 1000, 3) if p.probes_answered else None,
            "sent": p.probes_sent,
            "answered": p.probes_answered,
            "rx_bytes": min(p.rx_bytes, 2**62),
            "tx_bytes": min(p.tx_bytes, 2**62),
        }
        entry["state"] = classify(entry)[0]
        out.append(entry)
    return out


def _flow(f: pb.DeniedFlow) -> tuple[str, str, str, int, int]:
    try:
        src, dst = str(ipaddress.ip_address(f.src)), str(ipaddress.ip_address(f.dst))
    except ValueError as e:
        raise DomainError(Kind.INVALID, f"denied flow: {e}", {"field": "denied_flows"}) from e
    if f.proto not in ("tcp", "udp", "icmp", "icmpv6", "other") or f.dport > 65535:
        raise DomainError(
            Kind.INVALID, f"denied flow: bad proto {f.proto[:10]!r} or port", {"field": "denied_flows"}
        )
    return src, dst, f.proto, f.dport, min(f.packets, 2**62)


def encode(msg: Message | bytes, ct: str, cls: type[Message] | None = None) -> bytes:
    """A reply body in the request's content type; bytes are an already encoded protobuf of cls."""
    if isinstance(msg, bytes):
        if ct != wire.CT_JSON:
            return msg
        assert cls is not None
        msg = wire.decode(cls, msg)
    return wire.encode(msg, ct)


NODEAPI_KEY = web.AppKey("nodeapi", NodeApi)


def install(app: web.Application, ctx: OpsContext, ca: CertificateAuthority) -> NodeApi:
    """Add the node API routes and background tasks to the controller's application."""
    api = NodeApi(ctx, ca)
    app[NODEAPI_KEY] = api
    app.router.add_get("/v1/discover", api.discover)
    app.router.add_post("/v1/register", api.register)
    app.router.add_post("/v1/poll", api.poll)
    app.router.add_post("/v1/renew", api.renew)
    app.router.add_post("/v1/report", api.report)
    app.cleanup_ctx.append(api.background)
    app.on_shutdown.append(api.on_shutdown)
    return api
