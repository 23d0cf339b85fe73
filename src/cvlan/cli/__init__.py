"""cvlan.cli."""

__all__ = ["admin", "dnscmd", "http", "node", "table"]
