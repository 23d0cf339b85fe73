"""cvlan.cvland."""

__all__ = [
    "daemon",
    "hubs",
    "metrics",
    "paths",
    "probe",
    "reconcile",
    "relaychoice",
    "relaypath",
    "server",
    "settings",
]
