"""cvlan.dataplane."""

__all__ = [
    "engine",
    "firewall",
    "forwarding",
    "hubchoice",
    "nflog",
    "policyroute",
    "router",
    "uapi",
    "wgconfig",
]
