"""cvlan.wire."""

__all__ = ["certid", "endpoint", "ipc", "keys", "nodeproto", "pb", "relayproto", "routes", "stun"]
