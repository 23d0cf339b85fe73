"""cvlan.agent."""

__all__ = ["daemon", "netmap", "state"]
