"""Driving a load run: the fleet worker processes, the phases (registration, steady state, knee
steps, drain), and the per-second record of what happened.

The workers are spawned processes; each sends one WorkerMsg a second on a queue. The parent reads
them once a second, samples every component's CPU and memory, and moves from phase to phase."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, NotRequired, TypedDict

from cvlan.common.adminconf import AdminConf
from cvlan.sim.churn import Change, Membership, Receipt
from cvlan.sim.config import RunConfig, RunError, log
from cvlan.sim.fleet import FleetConfig, run_worker
from cvlan.sim.metrics import Interval
from cvlan.sim.procs import Sampler
from cvlan.sim.provision import TokenEntry
from cvlan.sim.simvrouter import SimVrouter
from cvlan.sim.stack import CvlanFront


class WorkerMsg(TypedDict):
    """What a fleet worker reports every second (fleet.run_worker), with the worker's number."""

    w: int
    t: float
    iv: dict[str, Any]
    """metrics.Interval.to_wire()"""
    churn: dict[str, list[Any]]
    """fleet.Fleet.take_churn()"""
    final: NotRequired[bool]


@dataclass
class Channels:
    """Shared between the parent and every worker: the report queue, the flags, the poll interval."""

    out: Queue[WorkerMsg]
    stop: Event
    """Drain and exit."""
    stop_reg: Event
    """Register no more nodes (the registration phase timed out)."""
    record: Event
    """Churn, and keep every map received (the steady state and after)."""
    interval: Synchronized[float]

    @classmethod
    def make(cls, ctx: Any, interval_s: float) -> Channels:
        return cls(ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Event(), ctx.Value("d", interval_s))


def _worker_entry(cfg: FleetConfig, wid: int, ch: Channels) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(msg: dict[str, Any]) -> None:
        m = WorkerMsg(w=wid, t=msg["t"], iv=msg["iv"], churn=msg["churn"])
        if msg.get("final"):
            m["final"] = True
        ch.out.put(m)

    run_worker(
        cfg, report, ch.stop.is_set, lambda: float(ch.interval.value), ch.stop_reg.is_set, ch.record.is_set
    )


@dataclass
class Second:
    phase: str
    iv: Interval = field(default_factory=Interval)
    procs: dict[str, dict[str, float]] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    load1: float = 0.0
    """The machine's one-minute load average."""


class Recorder:
    """Per-second timeline: merges worker intervals and process samples, tracks phases."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.secs: dict[int, Second] = {}
        self.phase = "register"
        self.phase_spans: list[dict[str, Any]] = []
        self.gauges_by_worker: dict[int, dict[str, int]] = {}
        self.finals: set[int] = set()
        self.changes: list[Change] = []
        self.receipts: list[Receipt] = []
        self.joined: dict[int, tuple[int, float]] = {}
        self.left: dict[int, float] = {}
        self.record_end = math.inf
        """When the fleet stopped churning and recording receipts (the drain)."""
        self.start_phase("register", {})

    def sec(self, t: float) -> Second:
        k = int(t - self.t0)
        s = self.secs.get(k)
        if s is None:
            s = self.secs[k] = Second(self.phase)
        return s

    def start_phase(self, name: str, extra: dict[str, Any]) -> None:
        now = time.time()
        if self.phase_spans:
            self.phase_spans[-1]["end"] = now - self.t0
        self.phase = name
        # The second under way belongs to the new phase: the rate a phase sets reaches the workers at
        # their next tick, so the polls they report for this second may already run at it. Left with
        # the old phase, a measured step's last second would count the next step's rate.
        current = self.secs.get(int(now - self.t0))
        if current is not None:
            current.phase = name
        self.phase_spans.append({"phase": name, "start": now - self.t0, "end": None, **extra})

    def add(self, msg: WorkerMsg) -> None:
        iv = Interval.from_wire(msg["iv"])
        self.gauges_by_worker[msg["w"]] = iv.gauges
        self.sec(msg["t"] - 0.5).iv.merge(iv)
        churn = msg.get("churn") or {}
        self.changes += [Change(*c) for c in churn.get("chg", [])]
        self.receipts += [Receipt(*r) for r in churn.get("rcv", [])]
        for node, cvlan, t in churn.get("join", []):
            self.joined[node] = (cvlan, t)
        for node, t in churn.get("left", []):
            self.left[node] = t
        if msg.get("final"):
            self.finals.add(msg["w"])

    def total(self, gauge: str) -> int:
        return sum(g.get(gauge, 0) for g in self.gauges_by_worker.values())

    def memberships(self) -> list[Membership]:
        return [Membership(n, c, t, self.left.get(n, math.inf)) for n, (c, t) in self.joined.items()]


def start_workers(fleets: list[FleetConfig], ch: Channels) -> list[SpawnProcess]:
    """One spawned process per fleet share."""
    ctx = mp.get_context("spawn")
    procs = []
    for wid, fc in enumerate(fleets):
        p = ctx.Process(target=_worker_entry, args=(fc, wid, ch), name=f"cvlan-sim-w{wid}")
        p.start()
        procs.append(p)
    return procs


CONNECTED_STILL_S = 15.0


def registration_done(nodes: int, registered: int, settled: int, connected: int, still_s: float) -> bool:
    """Whether the registration phase is over: every node registered and connected, or every
    registration ended (some refused or given up) and the connected count has not moved for
    CONNECTED_STILL_S seconds (nodes still reconnecting do so during the steady state)."""
    if registered >= nodes and connected >= registered:
        return True
    return settled >= nodes and still_s >= CONNECTED_STILL_S


class Driver:
    """The run's phases, one tick a second: registration until every node is in (or the timeout),
    the steady state (first unmeasured for --steady-settle), the knee steps, then the drain."""

    def __init__(
        self,
        cfg: RunConfig,
        rec: Recorder,
        ch: Channels,
        sampler: Sampler,
        procs: list[SpawnProcess],
        interrupted: asyncio.Event,
        front: CvlanFront | None = None,
    ) -> None:
        self.cfg, self.rec, self.ch, self.sampler, self.procs = cfg, rec, ch, sampler, procs
        self.interrupted = interrupted
        self.front = front
        self.steps = list(cfg.knee_rates)
        self.phase_end = math.inf
        self.last_print = 0.0
        self.last_con, self.con_changed = -1, time.time()
        self.settled_logged = False
        self.stop_at: float | None = None
        self.measured_next: tuple[str, dict[str, Any], float] | None = None
        """(phase, extra, seconds) to measure once the phase running unmeasured (settle-steady,
        settle-RATE) is over."""
        self.restart_front_at = math.inf
        self.restarting: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0 - (time.time() - self.rec.t0) % 1.0)
            if await self.tick():
                return

    async def tick(self) -> bool:
        """One second: read the workers' reports, sample, move on. True when the run is over."""
        rec = self.rec
        while True:
            try:
                rec.add(self.ch.out.get_nowait())
            except queue.Empty:
                break
        now = time.time()
        s = rec.sec(now)
        s.procs = self.sampler.sample()
        s.gauges = {k: rec.total(k) for k in ("registered", "settled", "connected", "inflight", "deleted")}
        s.load1 = round(os.getloadavg()[0], 2)
        if self.stop_at is not None:
            if len(rec.finals) >= len(self.procs) or now > self.stop_at:
                rec.start_phase("done", {})
                return True
            return False
        if not any(p.is_alive() for p in self.procs):
            raise RunError("every fleet worker exited early; see the errors above")
        if self.interrupted.is_set():
            log(self.cfg, "interrupted: draining the fleet and writing the results")
            self._drain(now, 20)
            return False
        if self.restarting is not None and self.restarting.done():
            task, self.restarting = self.restarting, None
            task.result()  # a front that does not come back ends the run (RunError)
        con = s.gauges["connected"]
        if con != self.last_con:
            self.last_con, self.con_changed = con, now
        if rec.phase == "register":
            await self._registration(now, s)
        elif now >= self.restart_front_at and self.front is not None:
            self.restart_front_at = math.inf
            log(self.cfg, "restarting cvlan-front: every node connection drops at once")
            rec.sec(now).iv.ok["front_restart"] += 1
            # in its own task: the run keeps its one-second record while the front is down
            self.restarting = asyncio.create_task(self.front.restart(self.cfg.front_down_s))
        elif now >= self.phase_end:
            self._advance(now)
        self._print(now, s)
        return False

    def _start(
        self, name: str, extra: dict[str, Any], settle_s: float, measure_s: float, now: float
    ) -> float:
        """Start phase `name` at `now`, first unmeasured for settle_s as settle-SUFFIX; return its end."""
        if settle_s > 0:
            self.measured_next = (name, extra, measure_s)
            self.rec.start_phase("settle-" + name.removeprefix("knee-"), extra)
            return now + settle_s
        self.rec.start_phase(name, extra)
        return now + measure_s

    async def _registration(self, now: float, s: Second) -> None:
        cfg, rec = self.cfg, self.rec
        reg, con = s.gauges["registered"], s.gauges["connected"]
        settled = s.gauges["settled"] >= cfg.nodes
        done = registration_done(cfg.nodes, reg, s.gauges["settled"], con, now - self.con_changed)
        if settled and not done and not self.settled_logged:
            self.settled_logged = True
            log(cfg, f"every registration ended: {reg}/{cfg.nodes} registered, {con} connected")
        if not done and now - rec.t0 > cfg.reg_timeout_s:
            # Stop registering: the steady state is measured with the nodes registered so far.
            log(cfg, f"registration incomplete after {cfg.reg_timeout_s:.0f} s: {reg}/{cfg.nodes}")
            self.ch.stop_reg.set()
            await asyncio.sleep(3)
            done = True
        if not done:
            return
        active = max(1, rec.total("registered"))
        if cfg.steady_rate:
            self.ch.interval.value = active / cfg.steady_rate
        extra = {"poll_rate": active / float(self.ch.interval.value), "nodes": active}
        self.phase_end = self._start("steady", extra, cfg.steady_settle_s, cfg.steady_s, now)
        self.ch.record.set()  # churn, and keep the maps received for the propagation figures
        if cfg.front_restart_at:
            self.restart_front_at = now + cfg.steady_settle_s + cfg.front_restart_at

    def _advance(self, now: float) -> None:
        cfg, rec = self.cfg, self.rec
        if self.measured_next is not None:  # its unmeasured time is over: measure it
            name, extra, seconds = self.measured_next
            self.measured_next = None
            rec.start_phase(name, extra)
            self.phase_end = now + seconds
        elif self.steps:
            rate = self.steps.pop(0)
            self.ch.interval.value = max(1, rec.total("registered")) / rate
            self.phase_end = self._start(
                f"knee-{rate:g}", {"poll_rate": rate}, cfg.knee_settle_s, cfg.knee_step_s, now
            )
        else:
            # Time for the fleet's settle (a plainly polling fleet waits one interval), then 40 s.
            self._drain(now, 40 + self.ch.interval.value * (1 + cfg.jitter))

    def _drain(self, now: float, seconds: float) -> None:
        self.rec.start_phase("drain", {})
        self.rec.record_end = now
        self.ch.stop.set()
        self.stop_at = now + seconds

    def _print(self, now: float, s: Second) -> None:
        if now - self.last_print < 5:
            return
        self.last_print = now
        rec = self.rec
        recent = [rec.sec(now - k).iv for k in range(2, 7)]
        polls = sum(iv.ok["poll"] for iv in recent) / len(recent)
        errors = sum(sum(iv.errors.values()) for iv in recent)
        log(
            self.cfg,
            f"[{now - rec.t0:6.0f}s {rec.phase}] registered {s.gauges['registered']}/{self.cfg.nodes} "
            f"connected {s.gauges['connected']} polls/s {polls:.0f} errors(5s) {errors} "
            + " ".join(f"{k}={v['cpu']:.0f}%/{v['rss_mb']:.0f}MB" for k, v in s.procs.items()),
        )


def fleet_configs(
    cfg: RunConfig, conf: AdminConf, host: str, port: int, homes: list[TokenEntry]
) -> list[FleetConfig]:
    """The fleet's share of each worker: node i goes to worker i mod workers, so each CVLAN's
    members are spread over the workers as independent nodes would be."""
    n_ips = max(1, math.ceil(cfg.nodes / 20_000) + 1)
    ips = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n_ips)]
    t0 = time.time() + 2.0
    w = max(1, cfg.workers)
    return [
        FleetConfig(
            host=host,
            port=port,
            server_name="localhost",
            ca_pem=conf.ca_pem,
            tokens=[h.token for h in homes[wid::w]],
            homes=[(h.tenant, h.cvlan) for h in homes[wid::w]],
            churn=cfg.churn,
            admin=conf,
            workers=w,
            first_index=wid,
            index_step=w,
            reg_rate=cfg.reg_rate / w,
            t0_wall=t0,
            poll_interval_s=cfg.poll_interval_s,
            jitter=cfg.jitter,
            report_interval_s=cfg.report_interval_s,
            renew_after_s=cfg.renew_after_s,
            long_poll_s=cfg.long_poll_s,
            local_ips=ips,
            reg_conns=max(1, cfg.reg_concurrency // w),
        )
        for wid in range(w)
    ]


async def drive(
    cfg: RunConfig,
    fleets: list[FleetConfig],
    vrouters: list[SimVrouter],
    sampler: Sampler,
    cleanups: list[Callable[[], None]],
    interrupted: asyncio.Event,
    front: CvlanFront | None,
) -> Recorder:
    """Start the workers and the simulated vrouters, go through the phases, return the record."""
    ch = Channels.make(mp.get_context("spawn"), cfg.poll_interval_s)
    procs = start_workers(fleets, ch)

    def stop_workers() -> None:
        ch.stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)

    cleanups.append(stop_workers)
    sampler.add("simulator", lambda: [os.getpid(), *[p.pid for p in procs if p.pid]], recursive=False)
    rec = Recorder(fleets[0].t0_wall)
    vstop = asyncio.Event()
    vtasks = []
    for v in vrouters:
        v.current = lambda: rec.sec(time.time()).iv
        vtasks.append(asyncio.create_task(v.run(vstop)))
    try:
        await Driver(cfg, rec, ch, sampler, procs, interrupted, front).run()
    finally:
        vstop.set()
        for tk in vtasks:
            tk.cancel()
        await asyncio.gather(*vtasks, return_exceptions=True)
    return rec
