"""cvlan.wire."""

__all__ = ["certid", "endpoint", "healthprobe", "ipc", "keys", "nodeproto", "pb", "relayproto", "stun"]
