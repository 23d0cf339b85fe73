"""cvlan.agent."""

__all__: list[str] = []
