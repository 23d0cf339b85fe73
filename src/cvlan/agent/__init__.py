"""cvlan.agent."""

__all__ = ["daemon", "join", "metrics", "netmap", "state"]
