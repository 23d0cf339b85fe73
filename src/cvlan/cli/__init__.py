"""cvlan.cli."""

__all__ = ["admin", "http", "login", "node", "table"]
