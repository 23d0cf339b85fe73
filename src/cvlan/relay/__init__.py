"""cvlan.relay."""

__all__ = ["bootstrap", "metrics", "server", "settings", "stunserver"]
