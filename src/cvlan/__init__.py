"""CVLAN: a multi-tenant WireGuard overlay network."""

__all__ = [
    "agent",
    "cli",
    "client",
    "common",
    "controller",
    "cvland",
    "dataplane",
    "devtools",
    "front",
    "relay",
    "sim",
    "vrouter",
    "wire",
]
__version__ = "0.1.0"
