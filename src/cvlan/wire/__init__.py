"""cvlan.wire."""

__all__ = [
    "certid",
    "dnsnames",
    "endpoint",
    "healthprobe",
    "ipc",
    "keys",
    "nodeproto",
    "pb",
    "relayproto",
    "routes",
    "stun",
]
