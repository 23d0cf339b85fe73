"""cvlan.wire."""

__all__: list[str] = []
