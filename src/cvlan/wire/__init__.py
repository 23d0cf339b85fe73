"""cvlan.wire."""

__all__ = ["certid", "dnsnames", "endpoint", "ipc", "keys", "nodeproto", "pb", "relayproto", "stun"]
