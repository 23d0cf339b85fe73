"""cvlan.controller.api."""

__all__ = ["framework", "oidc", "routes", "vrouter_routes"]
