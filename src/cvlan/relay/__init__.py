"""cvlan.relay."""

__all__ = ["bootstrap", "metrics", "revocation", "server", "settings", "stunserver"]
