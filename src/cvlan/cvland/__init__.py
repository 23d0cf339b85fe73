"""cvlan.cvland."""

__all__: list[str] = []
