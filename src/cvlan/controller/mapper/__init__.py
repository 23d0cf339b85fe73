"""cvlan.controller.mapper."""

__all__: list[str] = []
