"""The namespace lab for tests: re-exported from cvlan.lab.netns (shared with `make demo` and bench/)."""

from cvlan.lab.netns import PREFIX, Lab, Netns, Proc, sh, sweep_stale

__all__ = ["PREFIX", "Lab", "Netns", "Proc", "sh", "sweep_stale"]
