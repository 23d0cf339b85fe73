"""cvlan.wire."""

__all__ = [
    "certid",
    "dnsnames",
    "endpoint",
    "httphead",
    "ipc",
    "keys",
    "nodeproto",
    "pb",
    "relayproto",
    "stun",
]
