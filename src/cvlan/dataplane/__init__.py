"""cvlan.dataplane."""

__all__: list[str] = []
