"""cvlan.controller.api."""

__all__: list[str] = []
