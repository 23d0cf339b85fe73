"""cvlan.controller.db."""

__all__: list[str] = []
