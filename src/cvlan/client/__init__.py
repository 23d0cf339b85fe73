"""cvlan.client."""

__all__ = ["bootstrap", "controller", "ipc", "netcheck", "relay", "stun", "tls"]
