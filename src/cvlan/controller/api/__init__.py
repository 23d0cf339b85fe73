"""cvlan.controller.api."""

__all__ = ["framework", "routes", "vrouter_routes"]
