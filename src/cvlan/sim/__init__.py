"""cvlan.sim: the simulated fleet, bulk provisioning, load runs and their reports (cvlan-sim)."""

__all__ = [
    "fleet",
    "front",
    "httpconn",
    "metrics",
    "procs",
    "progress",
    "provision",
    "report",
    "run",
]
