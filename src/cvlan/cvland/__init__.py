"""cvlan.cvland."""

__all__ = [
    "daemon",
    "dnsserver",
    "dnsservice",
    "hubs",
    "metrics",
    "paths",
    "probe",
    "reconcile",
    "relaychoice",
    "relaypath",
    "resolver",
    "server",
    "settings",
    "subnets",
]
