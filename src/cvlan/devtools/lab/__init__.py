"""cvlan.devtools.lab: network-namespace topologies for the demo, the end-to-end tests and the benchmarks.

Not used by any daemon: it builds throwaway namespaces on a test or demo machine (root only)."""

__all__ = ["netns", "nsconnect"]
