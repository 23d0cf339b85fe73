"""The in-process controller and its API client (cvlan.devtools.harness, shared with bench and sim)."""

from cvlan.devtools.harness.controller import free_port, on_a_free_port
from cvlan.devtools.harness.inprocess import Api, ApiResult, RunningController

__all__ = ["Api", "ApiResult", "RunningController", "free_port", "on_a_free_port"]
