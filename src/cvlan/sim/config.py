"""A load run's configuration and the few things every part of a run shares (see run.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvlan.sim.churn import ChurnConfig
from cvlan.wire.peerhealth import REPORT_INTERVAL_S

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
    report_interval_s: float = REPORT_INTERVAL_S
    """A node looks whether its peers' health is due for a report this often, as cvlan-ctrl (0: never)."""
    long_poll_s: int = 30
    """Nodes long-poll as cvlan-ctrl does, for this long; 0: plain polling every poll interval."""
    reg_timeout_s: float = 3600.0
    provision_concurrency: int = 16
    quiet: bool = False
    label: str = ""
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    regions: int = 1
    vrouter_cvlans: int = 0
    """CVLANs per tenant served by a vrouter (the regions' vrouters in turn); each vrouter is
    simulated (simvrouter.py)."""
    policies: bool = True
    front_down_s: float = 0.0
    """How long cvlan-front stays down after that kill before it is started again."""
    front_restart_at: float = 0.0
    """Seconds into the steady state at which cvlan-front is killed and started again (every node
    connection drops at once: the reconnect storm after a crash); 0: never."""

    @property
    def nodes(self) -> int:
        return self.tenants * self.cvlans_per_tenant * self.nodes_per_cvlan


def log(cfg: RunConfig, line: str) -> None:
    if not cfg.quiet:
        print(line, file=sys.stderr, flush=True)
