"""cvlan.sim."""

__all__: list[str] = []
