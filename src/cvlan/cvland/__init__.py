"""cvlan.cvland."""

__all__ = [
    "daemon",
    "hubs",
    "metrics",
    "paths",
    "reconcile",
    "relaychoice",
    "relaypath",
    "server",
    "settings",
    "subnets",
]
