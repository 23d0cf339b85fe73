"""cvlan.controller.web."""

__all__: list[str] = []
