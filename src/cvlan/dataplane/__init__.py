"""cvlan.dataplane."""

__all__ = ["engine", "firewall", "hostdns", "hubchoice", "nflog", "router", "uapi", "wgconfig"]
