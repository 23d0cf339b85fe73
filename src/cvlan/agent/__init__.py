"""cvlan.agent."""

__all__ = ["daemon", "join", "netmap", "state"]
