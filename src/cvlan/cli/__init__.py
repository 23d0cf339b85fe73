"""cvlan.cli."""

__all__ = ["admin", "http", "node", "routes", "table"]
