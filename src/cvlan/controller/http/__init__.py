"""The controller's one HTTP layer: the route table, request handling, the error format and status
lines, request ids and metrics, shared by every adapter (management API, node API and its lean
server, web UI, infrastructure API)."""

__all__ = ["framework"]
