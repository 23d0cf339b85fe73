"""One way to start a controller and to enrol nodes, for the tests, the benchmarks, cvlan-sim and
`make demo`: `controller` (the `serve` command line, the wait until it is ready, a process stopped
by its pid), `inprocess` (a controller inside the caller's event loop, and a management API client)
and `enrol` (enrollment tokens, registration through the node API, cvland and cvlan-ctrl command
lines). It drives the product; no product layer imports it."""

__all__ = ["controller", "enrol", "inprocess"]
