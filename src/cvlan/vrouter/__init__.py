"""cvlan.vrouter: the hub router app (controller client + dataplane)."""

__all__ = ["daemon", "identity", "metrics", "reconcile", "settings"]
