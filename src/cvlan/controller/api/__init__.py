"""cvlan.controller.api."""

__all__ = ["framework", "health_routes", "routes", "vrouter_routes"]
