"""`cvlan-sim run`: a whole load run, from an empty machine to results.json.

Starts the stack (stack.py: an ephemeral PostgreSQL cluster, a controller subprocess and optionally
a TLS front, or targets an existing controller), provisions tenants / CVLANs / policies / vrouters /
tokens, then drives the fleet through its phases (drive.py: registration at the chosen rate, the
steady state with churn, optionally knee steps), sampling everything once a second, and writes the
figures (summary.py) into the results directory."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cvlan.common.adminconf import AdminConf
from cvlan.sim.config import Probe, RunConfig, RunError, log
from cvlan.sim.drive import drive, fleet_configs
from cvlan.sim.metrics import Interval
from cvlan.sim.procs import Sampler
from cvlan.sim.provision import Plan, TokenEntry, TokenStore, provision
from cvlan.sim.report import save_results
from cvlan.sim.simvrouter import SimVrouter
from cvlan.sim.stack import code_version, machine_info, raise_fd_limit, start_stack
from cvlan.sim.summary import summarize

__all__ = ["RunConfig", "RunError", "run"]


async def run(cfg: RunConfig) -> Path:
    """Do the whole run; return the path of results.json."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    _spread_fds(cfg)
    cleanups: list[Callable[[], None]] = []
    probes: list[Probe] = []
    # SIGINT / SIGTERM end the run early but cleanly: the workers drain, results are still written.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    sampler = Sampler()
    info: dict[str, Any] = {"machine": machine_info(), "config": _config_view(cfg), "code": code_version()}
    try:
        stack = await start_stack(cfg, sampler, cleanups, probes, info)
        store, homes = await _provision(cfg, stack.conf, info)
        if interrupted.is_set():
            raise RunError("interrupted during provisioning")
        fleets = fleet_configs(cfg, stack.conf, stack.host, stack.port, homes)
        vrouters = _vrouters(cfg, stack.conf, store)
        rec = await drive(cfg, fleets, vrouters, sampler, cleanups, interrupted, stack.front)
        info["phases"] = rec.phase_spans
        info["vrouters"] = [{"name": v.name, "cvlans": v.cvlans, "members": v.members} for v in vrouters]
        for probe in probes:
            try:
                info.update(await asyncio.to_thread(probe))
            except (subprocess.SubprocessError, OSError) as e:
                log(cfg, f"could not read the database's statistics: {e}")
        info["interrupted"] = interrupted.is_set()
        return save_results(cfg.results_dir, {**info, **summarize(cfg, rec)})
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                log(cfg, f"cleanup: {type(e).__name__}: {e}")


def _spread_fds(cfg: RunConfig) -> None:
    """Each process must stay under RLIMIT_NOFILE: where the hard limit cannot be raised (no
    CAP_SYS_RESOURCE, e.g. in a container), connections are spread over more fleet workers and more
    front processes sharing the listening port (SO_REUSEPORT)."""
    fds = raise_fd_limit(cfg.nodes * 3 + 50_000)
    per_worker = max(1000, fds - 2000)
    cfg.workers = max(cfg.workers, math.ceil(cfg.nodes / per_worker))
    if cfg.front == "none" and fds < cfg.nodes + 1000:
        raise RunError(
            f"the open-file limit is {fds}: one controller process cannot hold {cfg.nodes} TLS connections; "
            "use --front cvlan or --front haproxy"
        )


async def _provision(
    cfg: RunConfig, conf: AdminConf, info: dict[str, Any]
) -> tuple[TokenStore, list[TokenEntry]]:
    """Provision the plan; return the token store and each node's token, in registration order."""
    plan = Plan(
        cfg.tenants,
        cfg.cvlans_per_tenant,
        cfg.nodes_per_cvlan,
        regions=cfg.regions,
        vrouter_cvlans=min(cfg.vrouter_cvlans, cfg.cvlans_per_tenant),
        policies=cfg.policies,
        spare_uses=cfg.nodes_per_cvlan + 10 if cfg.churn.join else 0,
    )
    t = time.monotonic()
    summary, store = await provision(conf, plan, cfg.work_dir, cfg.provision_concurrency, quiet=cfg.quiet)
    info["provision"] = {
        "seconds": round(time.monotonic() - t, 1),
        "created": dict(summary.created),
        "existing": dict(summary.existing),
        "requests": summary.requests,
        "errors": dict(summary.errors),
    }
    log(cfg, "\n".join(summary.lines()))
    # Round-robin over CVLANs: consecutive registrations use different tokens, as independent
    # nodes would, instead of queueing on one token's row.
    entries = store.for_plan(plan)
    homes = [e for j in range(cfg.nodes_per_cvlan) for e in entries if e.nodes > j]
    if len(homes) < cfg.nodes:
        raise RunError(f"provisioning left tokens for {len(homes)} of {cfg.nodes} nodes")
    return store, homes[: cfg.nodes]


def _vrouters(cfg: RunConfig, conf: AdminConf, store: TokenStore) -> list[SimVrouter]:
    """One simulated vrouter per vrouter provisioned with its token (see simvrouter.py)."""
    return [
        SimVrouter(name, conf.server, tok, conf.ca_pem, cfg.work_dir / "vrouters" / name, Interval)
        for name, tok in sorted(store.vrouters.items())
    ]


def _config_view(cfg: RunConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["work_dir"] = str(cfg.work_dir.name)
    d["results_dir"] = str(cfg.results_dir.name)
    d["admin_conf"] = bool(cfg.admin_conf)
    d["nodes"] = cfg.nodes
    return d
