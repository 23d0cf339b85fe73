"""CVLAN: a multi-tenant WireGuard overlay network."""

__all__: list[str] = []
__version__ = "0.1.0"
