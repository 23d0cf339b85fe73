"""cvlan-front: the node API's TLS front for large fleets (see docs/FRONT.md)."""

__all__ = ["backend", "metrics", "park", "server", "tls13"]
