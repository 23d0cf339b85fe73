"""Peer health at the controller: reachability matrix, degradation events, history (docs/HEALTH.md)."""

__all__ = ["book", "matrix"]
