"""cvlan.sim: the simulated fleet, bulk provisioning, load runs and their reports (cvlan-sim)."""

__all__ = [
    "churn",
    "config",
    "drive",
    "fleet",
    "front",
    "httpconn",
    "metrics",
    "procs",
    "progress",
    "provision",
    "report",
    "report_churn",
    "run",
    "simvrouter",
    "stack",
    "summary",
]
