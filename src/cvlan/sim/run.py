"""`cvlan-sim run`: a whole load run, from an empty machine to results.json.

Starts an ephemeral PostgreSQL cluster and a controller subprocess (or targets an existing
controller), optionally HAProxy as the TLS front, provisions tenants / CVLANs / tokens, starts the
fleet workers, registers every node at the chosen rate, holds the steady state, optionally steps the
poll rate up to find the capacity knee, and samples everything once a second."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
from OpenSSL import SSL

from cvlan.common import adminconf
from cvlan.devtools.harness.controller import ControllerNotReady, ControllerProcess, serve_argv
from cvlan.devtools.pgcluster import PgCluster
from cvlan.sim import front
from cvlan.sim.fleet import FleetConfig, run_worker
from cvlan.sim.metrics import Histogram, Interval
from cvlan.sim.procs import Sampler
from cvlan.sim.provision import Plan, provision
from cvlan.sim.report import save_results

# PostgreSQL settings for the run on top of PgCluster's DEFAULT_CONF (see docs/SIMULATION.md).
PG_TUNING = {
    "max_connections": "200",
    "shared_buffers": "512MB",
    "synchronous_commit": "off",
    "wal_compression": "lz4",
    "checkpoint_timeout": "30min",
    "autovacuum_naptime": "30s",
    "log_min_duration_statement": "1000",
    # What the database did when a run's latency spiked: each checkpoint and autovacuum, with its
    # duration, in WORK_DIR/postgresql.log (copied there before the cluster is removed).
    "log_checkpoints": "on",
    "log_autovacuum_min_duration": "0",
}


BACKEND_CONNS = 128
"""Connections from all HAProxy processes to the controller together (see _start_stack)."""


Probe = Callable[[], dict[str, Any]]
"""Read once at the end of the run, before anything is stopped; its keys go into results.json."""


class RunError(Exception):
    """The run could not start or had to stop: one line for the operator."""


@dataclass
class RunConfig:
    tenants: int
    cvlans_per_tenant: int
    nodes_per_cvlan: int
    work_dir: Path
    results_dir: Path
    reg_rate: float = 200.0
    steady_s: float = 600.0
    poll_interval_s: float = 30.0
    jitter: float = 0.1
    workers: int = 1
    front: str = "none"
    server: str = ""
    admin_conf: Path | None = None
    steady_rate: float = 0.0
    """Poll rate for the steady state (sets every node's interval to nodes / rate); 0: keep the interval."""
    reg_concurrency: int = 16
    knee_rates: list[float] = field(default_factory=list)
    knee_step_s: float = 60.0
    steady_settle_s: float = 0.0
    """After registration, the steady rate runs this long unmeasured (phase settle-steady) before the
    steady state is measured: the switch from the registration phase's interval to the steady one
    (every node's first poll at the new rate, every liveness row written once) is not steady state."""
    knee_settle_s: float = 0.0
    """Before each knee step is measured, the new rate runs this long unmeasured (phase settle-RATE),
    so a backlog left by the step before does not count against it."""
    renew_after_s: float = 0.0
    report_every: int = 10
    long_poll_s: int = 30
    """Nodes long-poll as cvlan-ctrl does, for this long; 0: plain polling every poll interval."""
    reg_timeout_s: float = 3600.0
    provision_concurrency: int = 16
    quiet: bool = False
    label: str = ""

    @property
    def nodes(self) -> int:
        return self.tenants * self.cvlans_per_tenant * self.nodes_per_cvlan


def raise_fd_limit(want: int) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (the controller, HAProxy, workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        target = min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": psutil.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _code_version() -> str:
    """`git describe --always --dirty` of the source tree the controller runs from, if it is one."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return ""
    return _version(["git", "-C", str(root), "describe", "--always", "--dirty"])


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=10, text=True)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


class Controller:
    """A `cvlan-controller serve` subprocess on PostgreSQL (cvlan.devtools.harness), stopped by its pid."""

    def __init__(self, work: Path, db_url: str, port: int, proxy_socket: Path | None) -> None:
        self.data_dir = work / "controller"
        self.port = port
        self.log_path = work / "controller.log"
        env = dict(os.environ)
        env["CVLAN_CONTROLLER_LOG_LEVEL"] = "warning"
        # Registrations and map loads each hold a pooled connection; the default 10 queues them.
        env.setdefault("CVLAN_CONTROLLER_DB_POOL_SIZE", "30")
        # The TLS front forwards plain HTTP over proxy_socket: no second TLS layer to pay for.
        self.cmd = serve_argv(self.data_dir, f"127.0.0.1:{port}", db=db_url, proxy_socket=proxy_socket)
        self._log = self.log_path.open("ab")
        # Its own session, as a service has its own scheduling group: with autogroup scheduling the
        # controller is not queued behind the simulator's workers in the group of the shell that
        # started the run (PostgreSQL, started by pg_ctl, has its own too). Stopped by pid as before.
        self.process = ControllerProcess.spawn(
            self.cmd, self.data_dir, env=env, log=self._log, log_path=self.log_path, new_session=True
        )
        self.proc = self.process.proc

    async def wait_ready(self, timeout: float = 120) -> adminconf.AdminConf:
        try:
            return await self.process.wait_async(timeout, interval=0.3)
        except ControllerNotReady as e:
            raise RunError(str(e)) from None

    def stop(self) -> None:
        self.process.stop()
        self._log.close()


def _worker_entry(
    cfg: FleetConfig,
    wid: int,
    out: Any,
    stop: Any,
    interval: Synchronized,  # type: ignore[type-arg]
    stop_reg: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(msg: dict[str, Any]) -> None:
        msg["w"] = wid
        out.put(msg)

    run_worker(cfg, report, stop.is_set, lambda: float(interval.value), stop_reg.is_set)


@dataclass
class Second:
    phase: str
    iv: Interval = field(default_factory=Interval)
    procs: dict[str, dict[str, float]] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Per-second timeline: merges worker intervals and process samples, tracks phases."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.secs: dict[int, Second] = {}
        self.phase = "register"
        self.phase_spans: list[dict[str, Any]] = []
        self.gauges_by_worker: dict[int, dict[str, int]] = {}
        self.finals: set[int] = set()
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

    def add(self, msg: dict[str, Any]) -> None:
        iv = Interval.from_wire(msg["iv"])
        self.gauges_by_worker[msg["w"]] = iv.gauges
        self.sec(msg["t"] - 0.5).iv.merge(iv)
        if msg.get("final"):
            self.finals.add(msg["w"])

    def total(self, gauge: str) -> int:
        return sum(g.get(gauge, 0) for g in self.gauges_by_worker.values())


async def run(cfg: RunConfig) -> Path:
    """Do the whole run; return the path of results.json."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    # Each process must stay under RLIMIT_NOFILE: where the hard limit cannot be raised (no
    # CAP_SYS_RESOURCE, e.g. in a container), connections are spread over more fleet workers and
    # more HAProxy processes sharing the listening port (SO_REUSEPORT).
    fds = raise_fd_limit(cfg.nodes * 3 + 50_000)
    per_worker = max(1000, fds - 2000)
    cfg.workers = max(cfg.workers, math.ceil(cfg.nodes / per_worker))
    if cfg.front == "none" and fds < cfg.nodes + 1000:
        raise RunError(
            f"the open-file limit is {fds}: one controller process cannot hold {cfg.nodes} TLS connections; "
            "use --front cvlan or --front haproxy"
        )
    cleanups: list[Callable[[], None]] = []
    probes: list[Probe] = []
    # SIGINT / SIGTERM end the run early but cleanly: the workers drain, results are still written.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    sampler = Sampler()
    info: dict[str, Any] = {"machine": machine_info(), "config": _config_view(cfg), "code": _code_version()}
    try:
        conf, fleet_port, fleet_host = await _start_stack(cfg, sampler, cleanups, probes, info)
        plan = Plan(cfg.tenants, cfg.cvlans_per_tenant, cfg.nodes_per_cvlan)
        t = time.monotonic()
        summary, store = await provision(conf, plan, cfg.work_dir, cfg.provision_concurrency, quiet=cfg.quiet)
        info["provision"] = {
            "seconds": round(time.monotonic() - t, 1),
            "created": dict(summary.created),
            "existing": dict(summary.existing),
            "requests": summary.requests,
            "errors": dict(summary.errors),
        }
        _log(cfg, "\n".join(summary.lines()))
        if interrupted.is_set():
            raise RunError("interrupted during provisioning")
        # Round-robin over CVLANs: consecutive registrations use different tokens, as independent
        # nodes would, instead of queueing on one token's row.
        entries = store.for_plan(plan)
        tokens = [e.token for j in range(cfg.nodes_per_cvlan) for e in entries if e.nodes > j]
        if len(tokens) < cfg.nodes:
            raise RunError(f"provisioning left tokens for {len(tokens)} of {cfg.nodes} nodes")
        result = await _drive(
            cfg, conf, fleet_host, fleet_port, tokens, sampler, cleanups, probes, info, interrupted
        )
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                _log(cfg, f"cleanup: {type(e).__name__}: {e}")
    return result


def _keep_log(src: Path, dst: Path) -> None:
    """Copy a log that is about to be removed with its directory; a missing one is no error."""
    try:
        shutil.copyfile(src, dst)
    except OSError:
        pass


def _config_view(cfg: RunConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["work_dir"] = str(cfg.work_dir.name)
    d["results_dir"] = str(cfg.results_dir.name)
    d["admin_conf"] = bool(cfg.admin_conf)
    d["nodes"] = cfg.nodes
    return d


def _log(cfg: RunConfig, line: str) -> None:
    if not cfg.quiet:
        print(line, file=sys.stderr, flush=True)


async def _start_stack(
    cfg: RunConfig,
    sampler: Sampler,
    cleanups: list[Callable[[], None]],
    probes: list[Probe],
    info: dict[str, Any],
) -> tuple[adminconf.AdminConf, int, str]:
    if cfg.server:
        if cfg.admin_conf is None:
            raise RunError("--server needs --admin-conf (the controller's admin.conf)")
        conf = adminconf.load(cfg.admin_conf)
        u = urlparse(cfg.server)
        info["stack"] = {"controller": "external", "front": "none"}
        return conf, u.port or 443, u.hostname or "127.0.0.1"
    _log(cfg, "starting PostgreSQL")
    # In the system temp dir, not the work dir: the server runs as the postgres user, which may not
    # be able to enter the operator's (or a test's) private work directory.
    pg = PgCluster(conf=PG_TUNING)
    cleanups.append(pg.stop)
    cleanups.append(lambda: _keep_log(pg.root / "server.log", cfg.work_dir / "postgresql.log"))
    try:
        await asyncio.to_thread(pg.start)
        db_url = await asyncio.to_thread(pg.create_db, "cvlan")
    except (subprocess.SubprocessError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [str(e)]
        raise RunError(f"cannot start PostgreSQL: {detail[0]}") from e
    sampler.add("postgresql", lambda: [p] if (p := pg.pid()) else [], shared_memory=True)
    probes.append(lambda: {"postgresql_nodes_table": _nodes_table_stats(pg)})
    port = free_port()
    sock = _socket_path(cfg.work_dir, cleanups) if cfg.front != "none" else None
    _log(cfg, f"starting the controller on 127.0.0.1:{port}")
    ctl = Controller(cfg.work_dir, db_url, port, sock)
    cleanups.append(ctl.stop)
    conf = await ctl.wait_ready()
    sampler.add("controller", lambda: [ctl.proc.pid])
    info["stack"] = {
        "controller": "cvlan-controller serve (1 process)",
        "postgresql": _version([str(pg.bindir / "postgres"), "--version"]),
        "pg_tuning": {**pg.conf},
        "front": cfg.front,
    }
    if cfg.front == "none":
        return conf, port, "127.0.0.1"
    fport = free_port()
    size = FrontSize.of(cfg)
    assert sock is not None
    if cfg.front == "cvlan":
        return await _start_cvlan_front(cfg, size, ctl, conf, sock, fport, sampler, cleanups, info)
    hcfg = front.write_config(
        cfg.work_dir / "front",
        f"127.0.0.1:{fport}",
        sock,
        ctl.data_dir / "server.crt",
        ctl.data_dir / "server.key",
        conf.ca_pem,
        maxconn=size.per_proc,
        # HAProxy holds a long-poll with a connection to the controller for as long as it waits:
        # one for each node it holds, or the waits starve every other request (docs/FRONT.md).
        backend_conns=size.backend_conns + (size.per_proc if cfg.long_poll_s else 0),
        client_timeout=size.idle_timeout,
    )
    procs = [front.start(hcfg, cfg.work_dir / f"haproxy-{i}.log") for i in range(size.procs)]

    def stop_front() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    cleanups.append(stop_front)
    sampler.add("haproxy", lambda: [p.pid for p in procs])
    info["stack"]["front"] = _version([front.haproxy_binary(), "-v"])
    info["stack"]["front_processes"] = f"{size.procs} x maxconn {size.per_proc} (SO_REUSEPORT on one port)"
    await asyncio.sleep(0.5)
    for proc in procs:
        if proc.poll() is not None:
            raise RunError(f"haproxy exited with status {proc.returncode}; see its log in the work dir")
    return conf, fport, "127.0.0.1"


def _command(name: str) -> str:
    """One of this package's commands: on PATH, or beside the running interpreter (a venv's bin)."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


@dataclass
class FrontSize:
    """How a TLS front (HAProxy or cvlan-front) is sized for the fleet."""

    per_proc: int
    """Node connections one process may hold."""
    procs: int
    backend_conns: int
    """Connections to the controller per process."""
    idle_timeout: int
    """Seconds a node connection may sit idle."""

    @classmethod
    def of(cls, cfg: RunConfig) -> FrontSize:
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # A node's connection takes one descriptor; the connections to the controller are a few
        # dozen per process, shared by all requests. (HAProxy itself budgets two per connection and
        # warns that the limit is too low; its config tells it to go on.) The kernel spreads new
        # connections over the processes by a hash, not evenly: each is sized for 1/0.7 of its share.
        per_proc = max(500, min(cfg.nodes + 1_000, fds - 1_000))
        procs = math.ceil((cfg.nodes + 1_000) / (per_proc * 0.7))
        return cls(
            per_proc=per_proc,
            procs=procs,
            # About 128 connections to the controller in all: it runs one request at a time, so
            # more only fill its accept queue; requests beyond them wait in the front's queue.
            backend_conns=max(8, math.ceil(BACKEND_CONNS / procs)),
            # A node's connection sits idle for one poll interval (plus jitter) between polls; the
            # front must not close it as idle in the meantime, or every poll pays a new handshake.
            idle_timeout=max(300, math.ceil(2 * cfg.poll_interval_s * (1 + cfg.jitter))),
        )


async def _start_cvlan_front(
    cfg: RunConfig,
    size: FrontSize,
    ctl: Controller,
    conf: adminconf.AdminConf,
    sock: Path,
    fport: int,
    sampler: Sampler,
    cleanups: list[Callable[[], None]],
    info: dict[str, Any],
) -> tuple[adminconf.AdminConf, int, str]:
    """cvlan-front as the TLS front: its workers share the port (SO_REUSEPORT), sized as HAProxy's
    processes are; it keeps a node connection's traffic keys, not OpenSSL's object."""
    work = cfg.work_dir / "front"
    work.mkdir(parents=True, exist_ok=True)
    ca = work / "front-ca.pem"
    ca.write_text(conf.ca_pem)
    cmd = [
        _command("cvlan-front"),
        "--listen",
        f"127.0.0.1:{fport}",
        "--cert",
        str(ctl.data_dir / "server.crt"),
        "--key",
        str(ctl.data_dir / "server.key"),
        "--ca",
        str(ca),
        "--backend",
        str(sock),
        "--workers",
        str(size.procs),
        "--max-conns",
        str(size.per_proc),
        "--backend-conns",
        str(size.backend_conns),
        "--idle-timeout",
        str(size.idle_timeout),
        # The whole simulated fleet connects from 127.0.0.1: one address may hold every slot.
        "--max-uncertified-per-addr",
        str(size.per_proc),
        "--log-level",
        "warning",
    ]
    log = (cfg.work_dir / "cvlan-front.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_front() -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()

    cleanups.append(stop_front)
    sampler.add("cvlan-front", lambda: [proc.pid])
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    info["stack"]["front"] = f"cvlan-front (handshakes in {openssl})"
    info["stack"]["front_processes"] = (
        f"{size.procs} workers x max {size.per_proc} connections (SO_REUSEPORT on one port)"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(
                f"cvlan-front exited with status {proc.returncode}; see cvlan-front.log in the work dir"
            )
        try:
            with socket.create_connection(("127.0.0.1", fport), timeout=1):
                break
        except OSError:
            await asyncio.sleep(0.2)
    else:
        raise RunError("cvlan-front did not start listening within 30 s")
    await asyncio.sleep(0.5)  # every worker binds its own socket
    return conf, fport, "127.0.0.1"


NODES_TABLE_STATS = (
    "SELECT s.n_tup_upd, s.n_tup_hot_upd, s.autovacuum_count, s.autoanalyze_count, s.n_dead_tup, "
    "pg_table_size('nodes'), pg_indexes_size('nodes'), "
    "coalesce(array_to_string(c.reloptions, ','), '') "
    "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'nodes'"
)


def _nodes_table_stats(pg: PgCluster) -> dict[str, Any]:
    """How the nodes table took the liveness updates: how many were heap-only (no index touched),
    how often autovacuum ran, and its size."""
    rows = pg.query(NODES_TABLE_STATS, db="cvlan")
    if not rows:
        return {}
    upd, hot, vac, ana, dead, size, isize, opts = rows[0]
    return {
        "updates": int(upd),
        "hot_updates": int(hot),
        "autovacuums": int(vac),
        "autoanalyzes": int(ana),
        "dead_rows": int(dead),
        "table_mb": round(int(size) / 2**20, 1),
        "indexes_mb": round(int(isize) / 2**20, 1),
        "options": opts,
    }


def _socket_path(work: Path, cleanups: list[Callable[[], None]]) -> Path:
    """Where the controller listens for HAProxy: in the work dir, or a private temporary directory
    when that path would be too long for a Unix socket (108 bytes)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work.resolve() / "ctl.sock"
    if len(str(path)) < 100:
        return path
    tmp = Path(tempfile.mkdtemp(prefix="cvlan-sim-"))
    cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return tmp / "ctl.sock"


async def _drive(
    cfg: RunConfig,
    conf: adminconf.AdminConf,
    host: str,
    port: int,
    tokens: list[str],
    sampler: Sampler,
    cleanups: list[Callable[[], None]],
    probes: list[Probe],
    info: dict[str, Any],
    interrupted: asyncio.Event,
) -> Path:
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    stop = ctx.Event()
    stop_reg = ctx.Event()
    interval = ctx.Value("d", cfg.poll_interval_s)
    n_ips = max(1, math.ceil(cfg.nodes / 20_000) + 1)
    ips = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n_ips)]
    t0 = time.time() + 2.0
    procs: list[Any] = []
    w = max(1, cfg.workers)
    for wid in range(w):
        fc = FleetConfig(
            host=host,
            port=port,
            server_name="localhost",
            ca_pem=conf.ca_pem,
            tokens=tokens[wid::w],
            first_index=wid,
            index_step=w,
            reg_rate=cfg.reg_rate / w,
            t0_wall=t0,
            poll_interval_s=cfg.poll_interval_s,
            jitter=cfg.jitter,
            report_every=cfg.report_every,
            renew_after_s=cfg.renew_after_s,
            long_poll_s=cfg.long_poll_s,
            local_ips=ips,
            reg_conns=max(1, cfg.reg_concurrency // w),
        )
        p = ctx.Process(
            target=_worker_entry, args=(fc, wid, out, stop, interval, stop_reg), name=f"cvlan-sim-w{wid}"
        )
        p.start()
        procs.append(p)

    def stop_workers() -> None:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)

    cleanups.append(stop_workers)
    sampler.add("simulator", lambda: [os.getpid(), *[p.pid for p in procs if p.pid]], recursive=False)
    rec = Recorder(t0)
    await _loop(cfg, rec, out, (stop, stop_reg), interval, sampler, procs, interrupted)
    info["phases"] = rec.phase_spans
    for probe in probes:
        try:
            info.update(await asyncio.to_thread(probe))
        except (subprocess.SubprocessError, OSError) as e:
            _log(cfg, f"could not read the database's statistics: {e}")
    info["interrupted"] = interrupted.is_set()
    return save_results(cfg.results_dir, {**info, **_summarize(cfg, rec)})


CONNECTED_STILL_S = 15.0


def registration_done(nodes: int, registered: int, settled: int, connected: int, still_s: float) -> bool:
    """Whether the registration phase is over: every node registered and connected, or every
    registration ended (some refused or given up) and the connected count has not moved for
    CONNECTED_STILL_S seconds (nodes still reconnecting do so during the steady state)."""
    if registered >= nodes and connected >= registered:
        return True
    return settled >= nodes and still_s >= CONNECTED_STILL_S


async def _loop(
    cfg: RunConfig,
    rec: Recorder,
    out: Any,
    stops: tuple[Any, Any],
    interval: Any,
    sampler: Sampler,
    procs: list[Any],
    interrupted: asyncio.Event,
) -> None:
    stop, stop_reg = stops
    steps = list(cfg.knee_rates)
    phase_end = math.inf
    last_print = 0.0
    last_con, con_changed = -1, time.time()
    settled_logged = False
    stop_at: float | None = None
    measured_next: tuple[str, dict[str, Any], float] | None = None
    """(phase, extra, seconds) to measure once the phase running unmeasured (settle-steady,
    settle-RATE) is over."""

    def start(name: str, extra: dict[str, Any], settle_s: float, measure_s: float, now: float) -> float:
        """Start phase `name` at `now`, first unmeasured for settle_s as settle-SUFFIX; return its end."""
        nonlocal measured_next
        if settle_s > 0:
            measured_next = (name, extra, measure_s)
            rec.start_phase("settle-" + name.removeprefix("knee-"), extra)
            return now + settle_s
        rec.start_phase(name, extra)
        return now + measure_s

    while True:
        await asyncio.sleep(1.0 - (time.time() - rec.t0) % 1.0)
        while True:
            try:
                rec.add(out.get_nowait())
            except queue.Empty:
                break
        now = time.time()
        s = rec.sec(now)
        s.procs = sampler.sample()
        s.gauges = {k: rec.total(k) for k in ("registered", "settled", "connected", "inflight")}
        if stop_at is not None:
            if len(rec.finals) >= len(procs) or now > stop_at:
                rec.start_phase("done", {})
                return
            continue
        if not any(p.is_alive() for p in procs):
            raise RunError("every fleet worker exited early; see the errors above")
        if interrupted.is_set():
            _log(cfg, "interrupted: draining the fleet and writing the results")
            rec.start_phase("drain", {})
            stop.set()
            stop_at = now + 20
            continue
        reg, con = s.gauges["registered"], s.gauges["connected"]
        if con != last_con:
            last_con, con_changed = con, now
        if rec.phase == "register":
            settled = s.gauges["settled"] >= cfg.nodes
            done = registration_done(cfg.nodes, reg, s.gauges["settled"], con, now - con_changed)
            if settled and not done and not settled_logged:
                settled_logged = True
                _log(cfg, f"every registration ended: {reg}/{cfg.nodes} registered, {con} connected")
            if not done and now - rec.t0 > cfg.reg_timeout_s:
                # Stop registering: the steady state is measured with the nodes registered so far.
                _log(cfg, f"registration incomplete after {cfg.reg_timeout_s:.0f} s: {reg}/{cfg.nodes}")
                stop_reg.set()
                await asyncio.sleep(3)
                done = True
            if done:
                active = max(1, rec.total("registered"))
                if cfg.steady_rate:
                    interval.value = active / cfg.steady_rate
                extra = {"poll_rate": active / float(interval.value), "nodes": active}
                phase_end = start("steady", extra, cfg.steady_settle_s, cfg.steady_s, now)
        elif now >= phase_end:
            if measured_next is not None:  # its unmeasured time is over: measure it
                name, extra, seconds = measured_next
                measured_next = None
                rec.start_phase(name, extra)
                phase_end = now + seconds
            elif steps:
                rate = steps.pop(0)
                interval.value = max(1, rec.total("registered")) / rate
                phase_end = start(
                    f"knee-{rate:g}", {"poll_rate": rate}, cfg.knee_settle_s, cfg.knee_step_s, now
                )
            else:
                rec.start_phase("drain", {})
                stop.set()
                stop_at = now + 40
        if now - last_print >= 5:
            last_print = now
            recent = [rec.sec(now - k).iv for k in range(2, 7)]
            polls = sum(iv.ok["poll"] for iv in recent) / len(recent)
            errors = sum(sum(iv.errors.values()) for iv in recent)
            _log(
                cfg,
                f"[{now - rec.t0:6.0f}s {rec.phase}] registered {reg}/{cfg.nodes} connected {con} "
                f"polls/s {polls:.0f} errors(5s) {errors} "
                + " ".join(f"{k}={v['cpu']:.0f}%/{v['rss_mb']:.0f}MB" for k, v in s.procs.items()),
            )


def _avg(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


def _summarize(cfg: RunConfig, rec: Recorder) -> dict[str, Any]:
    """Timeline rows and one summary per phase (histograms merged over the phase)."""
    timeline: list[dict[str, Any]] = []
    phases: dict[str, dict[str, Any]] = {}
    acc: dict[str, tuple[Interval, list[Second]]] = {}
    for k in sorted(rec.secs):
        s = rec.secs[k]
        iv = s.iv
        timeline.append(
            {
                "t": k,
                "phase": s.phase,
                "ok": dict(iv.ok),
                "errors": dict(iv.errors),
                "error_samples": iv.samples,
                "register": iv.hist["register"].summary(),
                "poll": iv.hist["poll"].summary(),
                "gauges": s.gauges,
                "procs": s.procs,
            }
        )
        a = acc.setdefault(s.phase, (Interval(), []))
        a[0].merge(iv)
        a[1].append(s)
    for name, (iv, secs) in acc.items():
        span = next((p for p in rec.phase_spans if p["phase"] == name), {})
        dur = len(secs)
        comps = sorted({c for s in secs for c in s.procs})
        usage = {}
        for c in comps:
            cpus = [s.procs[c]["cpu"] for s in secs if c in s.procs]
            mems = [s.procs[c]["rss_mb"] for s in secs if c in s.procs]
            usage[c] = {
                "cpu_avg": round(sum(cpus) / len(cpus), 1) if cpus else 0.0,
                "cpu_max": max(cpus, default=0.0),
                "rss_mb_max": max(mems, default=0.0),
                "rss_mb_end": mems[-1] if mems else 0.0,
                "runq_wait": _avg([s.procs[c].get("runq_wait_ms") for s in secs if c in s.procs]),
            }
            for extra in ("softirq", "steal"):
                if any(extra in s.procs.get(c, {}) for s in secs):
                    usage[c][f"{extra}_avg"] = _avg([s.procs[c].get(extra) for s in secs if c in s.procs])
        phases[name] = {
            "seconds": dur,
            "poll_rate_target": span.get("poll_rate"),
            "ok": dict(iv.ok),
            "errors": dict(iv.errors),
            "error_samples": iv.samples,
            "rates": {op: round(n / dur, 1) if dur else 0.0 for op, n in iv.ok.items()},
            "latency_ms": {op: h.summary() for op, h in iv.hist.items() if h.n},
            "usage": usage,
        }
    reg_secs = [t for t in timeline if t["ok"].get("register")]
    reg_total = sum(t["ok"].get("register", 0) for t in timeline)
    first = reg_secs[0]["t"] if reg_secs else 0
    last = reg_secs[-1]["t"] if reg_secs else 0
    all_reg = Histogram()
    for s in rec.secs.values():
        all_reg.merge(s.iv.hist["register"])
    return {
        "registration": {
            "nodes": cfg.nodes,
            "registered": reg_total,
            "seconds": last - first + 1 if reg_secs else 0,
            "rate": round(reg_total / (last - first + 1), 1) if reg_secs else 0.0,
            "latency_ms": all_reg.summary(),
        },
        "phase_summary": phases,
        "timeline": timeline,
    }
