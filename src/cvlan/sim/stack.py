"""The stack a load run measures: an ephemeral PostgreSQL cluster, `cvlan-controller serve`, and a
TLS front (cvlan-front or HAProxy), each started as a subprocess, sampled, and stopped by its pid."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
from OpenSSL import SSL

from cvlan.common import adminconf
from cvlan.devtools.harness.controller import ControllerNotReady, ControllerProcess, serve_argv
from cvlan.devtools.pgcluster import PgCluster
from cvlan.sim import front
from cvlan.sim.config import Probe, RunConfig, RunError, log
from cvlan.sim.procs import Sampler

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
"""Connections from all HAProxy processes to the controller together (see start_stack)."""


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


def code_version() -> str:
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
        # Its metrics listener on a free port: the default one may be taken by another controller
        # on the machine (another run's), and the controller refuses to start then.
        env.setdefault("CVLAN_CONTROLLER_METRICS_LISTEN", f"127.0.0.1:{free_port()}")
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


def _keep_log(src: Path, dst: Path) -> None:
    """Copy a log that is about to be removed with its directory; a missing one is no error."""
    try:
        shutil.copyfile(src, dst)
    except OSError:
        pass


async def start_stack(
    cfg: RunConfig,
    sampler: Sampler,
    cleanups: list[Callable[[], None]],
    probes: list[Probe],
    info: dict[str, Any],
) -> Stack:
    """Start PostgreSQL, the controller and the front the configuration asks for (or use --server);
    each start adds its stop to cleanups, its processes to the sampler."""
    if cfg.server:
        if cfg.admin_conf is None:
            raise RunError("--server needs --admin-conf (the controller's admin.conf)")
        conf = adminconf.load(cfg.admin_conf)
        u = urlparse(cfg.server)
        info["stack"] = {"controller": "external", "front": "none"}
        return Stack(conf, u.hostname or "127.0.0.1", u.port or 443)
    log(cfg, "starting PostgreSQL")
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
    log(cfg, f"starting the controller on 127.0.0.1:{port}")
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
        return Stack(conf, "127.0.0.1", port)
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
    return Stack(conf, "127.0.0.1", fport)


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
) -> Stack:
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
    fr = CvlanFront(cmd, cfg.work_dir / "cvlan-front.log", fport)
    cleanups.append(fr.stop)
    sampler.add("cvlan-front", lambda: [fr.proc.pid] if fr.proc else [])
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    info["stack"]["front"] = f"cvlan-front (handshakes in {openssl})"
    info["stack"]["front_processes"] = (
        f"{size.procs} workers x max {size.per_proc} connections (SO_REUSEPORT on one port)"
    )
    await fr.start()
    return Stack(conf, "127.0.0.1", fport, fr)


class CvlanFront:
    """The cvlan-front process group: started, stopped, and restarted (every node connection dropped
    at once, the run's --front-restart-at)."""

    def __init__(self, cmd: list[str], log_path: Path, port: int) -> None:
        self.cmd, self.log_path, self.port = cmd, log_path, port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RunError(
                    f"cvlan-front exited with status {proc.returncode}; see cvlan-front.log in the work dir"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                await asyncio.sleep(0.2)
        else:
            raise RunError("cvlan-front did not start listening within 30 s")
        await asyncio.sleep(0.5)  # every worker binds its own socket

    def stop(self, kill: bool = False) -> None:
        """Stop the parent and its workers: SIGTERM (they drain), or SIGKILL to the whole group (a
        crash: every connection drops at once)."""
        proc = self.proc
        if proc is None:
            return
        if kill:
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    async def restart(self, down_s: float = 0.0) -> None:
        """A crash and a restart: SIGKILL to the group, down_s seconds of outage, then start again on
        the same port."""
        await asyncio.to_thread(self.stop, True)
        await asyncio.sleep(down_s)
        await self.start()


@dataclass
class Stack:
    """What the fleet talks to: the admin file, the node API's address, and cvlan-front if it runs."""

    conf: adminconf.AdminConf
    host: str
    port: int
    front: CvlanFront | None = None


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
