"""cvlan.controller.db."""

__all__ = ["engine", "migrations", "models", "queries"]
