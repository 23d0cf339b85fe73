"""cvlan.controller.api."""

__all__ = ["framework", "routes", "subnet_routes", "vrouter_routes"]
