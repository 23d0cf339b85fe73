"""cvlan.controller.nodeapi."""

__all__: list[str] = []
