"""cvlan.cli."""

__all__ = ["admin", "dnscmd", "http", "login", "node", "routes", "table"]
