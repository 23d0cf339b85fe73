"""cvlan.cvland."""

__all__ = ["daemon", "paths", "reconcile", "relaypath", "server", "settings"]
