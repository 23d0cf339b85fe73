"""cvlan.dataplane."""

__all__ = [
    "engine",
    "firewall",
    "forwarding",
    "hostdns",
    "hubchoice",
    "nflog",
    "policyroute",
    "router",
    "uapi",
    "wgconfig",
]
