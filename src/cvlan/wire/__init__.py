"""cvlan.wire."""

__all__ = [
    "certid",
    "dnsnames",
    "endpoint",
    "healthprobe",
    "httphead",
    "ids",
    "ipc",
    "keys",
    "nodeproto",
    "pb",
    "peerhealth",
    "relayproto",
    "routes",
    "stun",
]
