"""cvlan.client."""

__all__ = ["bootstrap", "controller", "ipc", "relay", "stun", "tls"]
