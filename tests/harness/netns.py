"""The namespace lab for tests: re-exported from cvlan.devtools.lab.netns (shared with `make demo`, bench)."""

from cvlan.devtools.lab.netns import PREFIX, Lab, Netns, Proc, sh, sweep_stale

__all__ = ["PREFIX", "Lab", "Netns", "Proc", "sh", "sweep_stale"]
