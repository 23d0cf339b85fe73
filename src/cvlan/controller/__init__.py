"""cvlan.controller."""

__all__ = [
    "api",
    "app",
    "audit",
    "auth",
    "ca",
    "credentials",
    "db",
    "errors",
    "infraapi",
    "ipam",
    "mapper",
    "nodeapi",
    "ops",
    "policy",
    "proxies",
    "settings",
    "usercmd",
    "vrouterapi",
    "vrouting",
    "web",
]
