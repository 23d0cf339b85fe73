"""cvlan.vrouter."""

__all__: list[str] = []
