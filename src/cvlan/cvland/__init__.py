"""cvlan.cvland."""

__all__ = ["daemon", "hubs", "paths", "reconcile", "relaychoice", "relaypath", "server", "settings"]
