"""cvlan.controller.api."""

__all__ = ["dns", "framework", "routes", "vrouter_routes"]
