"""cvlan.relay."""

__all__: list[str] = []
