"""cvlan.dataplane."""

__all__ = ["engine", "firewall", "hubchoice", "nflog", "router", "uapi", "wgconfig"]
