"""Alembic migrations of the controller store (append-only)."""

__all__: list[str] = []
