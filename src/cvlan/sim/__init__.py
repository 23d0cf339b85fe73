"""cvlan.sim: the simulated fleet, bulk provisioning, load runs and their reports (cvlan-sim)."""

__all__: list[str] = []
