"""cvlan-front's Prometheus metrics (cvlan_front_*), one registry per worker process: each worker
serves its own on its own port (docs/METRICS.md says why). Gauges are read from the worker's state
at scrape time; counters are bumped where the event happens."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge

from cvlan.front.tls13 import MAX_PLAINTEXT


class HandshakeFailure(StrEnum):
    """Why a TLS handshake failed (a bounded label; the log line carries OpenSSL's own words)."""

    TIMEOUT = "timeout"
    RECORD_TOO_LONG = "record_too_long"
    TLS_ERROR = "tls_error"
    UNSUPPORTED = "unsupported_session"


class Refusal(StrEnum):
    """Why a new connection was closed at accept, or an uncertified one pushed out."""

    PER_ADDRESS = "per_address"
    FULL = "full"
    PUSHED_OUT = "pushed_out"


class FrontMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.accepted = Counter("cvlan_front_connections_accepted", "Node connections accepted", registry=r)
        refused = Counter(
            "cvlan_front_connections_refused",
            "Connections closed at accept (per_address, full) or pushed out while uncertified",
            ["reason"],
            registry=r,
        )
        self.refused = {x: refused.labels(x.value) for x in Refusal}
        self.handshakes = Counter("cvlan_front_handshakes", "TLS handshakes completed", registry=r)
        failures = Counter(
            "cvlan_front_handshake_failures", "TLS handshakes that failed, by reason", ["reason"], registry=r
        )
        self.handshake_failures = {x: failures.labels(x.value) for x in HandshakeFailure}
        requests = Counter(
            "cvlan_front_requests",
            "Node API requests: forwarded (answered by the controller), refused by the front, or "
            "bad_gateway (the controller did not answer)",
            ["result"],
            registry=r,
        )
        self.forwarded, self.refused_requests, self.bad_gateway = (
            requests.labels(x) for x in ("forwarded", "refused", "bad_gateway")
        )
        records = Counter(
            "cvlan_front_tls_records",
            "Protected TLS records opened (in) and sealed for answers (out) after the handshake",
            ["direction"],
            registry=r,
        )
        self.records_in, self.records_out = records.labels("in"), records.labels("out")
        self.connections = Gauge("cvlan_front_connections", "Open node connections", registry=r)
        self.uncertified = Gauge(
            "cvlan_front_uncertified_connections",
            "Open connections in the handshake or without a client certificate",
            registry=r,
        )
        self.backend_queue = Gauge(
            "cvlan_front_backend_queue", "Requests waiting for a connection to the controller", registry=r
        )
        self.backend_conns = Gauge(
            "cvlan_front_backend_connections",
            "Open connections to the controllers' proxy sockets",
            registry=r,
        )
        self.backend_retries = Counter(
            "cvlan_front_backend_retries",
            "Requests sent again to another controller after the connection carrying them was lost "
            "(a controller stopped or died)",
            registry=r,
        )

    def sealed(self, n_bytes: int) -> None:
        """An answer of n_bytes went out: one record per 16 KB of it, at least one."""
        self.records_out.inc(max(1, -(-n_bytes // MAX_PLAINTEXT)))

    def watch(
        self,
        conns: Callable[[], int],
        uncertified: Callable[[], int],
        queue: Callable[[], int],
        backend: Callable[[], int],
    ) -> None:
        """Read the gauges from the worker's own tables when scraped (nothing to keep in step)."""
        self.connections.set_function(conns)
        self.uncertified.set_function(uncertified)
        self.backend_queue.set_function(queue)
        self.backend_conns.set_function(backend)
