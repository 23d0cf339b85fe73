"""cvlan.cvland."""

__all__ = [
    "daemon",
    "dnsserver",
    "dnsservice",
    "hubs",
    "metrics",
    "paths",
    "reconcile",
    "relaychoice",
    "relaypath",
    "resolver",
    "server",
    "settings",
]
