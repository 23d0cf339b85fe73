"""cvlan.dataplane."""

__all__ = ["engine", "firewall", "nflog", "router", "uapi", "wgconfig"]
